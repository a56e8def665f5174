"""The coordinator of a group snapshot across nodes: PREPARE everywhere, then COMMIT
everywhere, or ABORT everywhere (docs/design/group-snapshots.md).

It runs in whoever took the request (the CSI plugin that received
CreateVolumeGroupSnapshot) and talks to each involved node's agent, its own node's
included, through ``connect`` (``AgentFleet.client``: mutual TLS, the server's certificate
checked against the node's name). The group's instant is the moment the last READY
arrives: every node is frozen then, and none thaws before it is told to commit.

Every node bounds its own freeze by its lease, so the coordinator needs no cleanup if it
dies: the nodes thaw and roll back by themselves. While it lives, it aborts the whole group
on any failure, and gives up as soon as the earliest lease of the nodes already frozen has
passed (a slow node cannot make the group succeed any more).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from statehold.agent.client import AgentClient
from statehold.agent.gen import agent_pb2 as pb
from statehold.engine.groups import Member
from statehold.errors import StateholdError, Temporary, Unavailable

log = logging.getLogger("statehold.agent.groups")

PREPARE_TIMEOUT = 120.0
"""Seconds one node may take to prepare (its early copies are most of it)."""
COMMIT_GRACE = 30.0
"""Seconds beyond the lease a COMMIT may take to be answered."""
ABORT_TIMEOUT = 15.0
PART_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Taken:
    """A group across nodes, as taken (or found whole)."""

    name: str
    attempt: str
    created_at: float
    members: Mapping[str, tuple[Member, ...]]    # per node
    windows: Mapping[str, float]                 # per node: first freeze to last thaw (0: none)
    existed: bool = False                        # found whole, nothing was frozen


def _members(reply: Sequence[pb.GroupMember]) -> tuple[Member, ...]:
    return tuple(Member(m.pool, m.volume, m.snapshot) for m in reply)


def _nothing(step: str) -> None:
    pass


class Coordinator:
    def __init__(self, connect: Callable[[str], AgentClient], *,
                 prepare_timeout: float = PREPARE_TIMEOUT, commit_grace: float = COMMIT_GRACE,
                 abort_timeout: float = ABORT_TIMEOUT,
                 checkpoint: Callable[[str], None] = _nothing) -> None:
        """``checkpoint`` runs at ``prepared`` (every node READY, before any COMMIT) and
        ``committed``: test points."""
        self.connect = connect
        self.prepare_timeout = prepare_timeout
        self.commit_grace = commit_grace
        self.abort_timeout = abort_timeout
        self.checkpoint = checkpoint

    # -- reading and deleting ------------------------------------------------------------
    def parts(self, name: str, nodes: Sequence[str]) -> dict[str, pb.GroupPartReply]:
        """Each node's part of the group (an unreachable node raises Unavailable)."""
        return dict(zip(nodes, self._each(
            nodes, lambda n: self.connect(n).group_part(name, timeout=PART_TIMEOUT)), strict=True))

    def delete(self, name: str, nodes: Sequence[str]) -> None:
        """Delete every node's part (a node without one is fine)."""
        self._each(nodes, lambda n: self.connect(n).group_part(name, delete=True,
                                                               timeout=PART_TIMEOUT))

    def whole(self, name: str, parts: Mapping[str, Sequence[Member]]) -> Taken | None:
        """The group if every node holds its part from one attempt, none missing."""
        found = self.parts(name, sorted(parts))
        attempts = {r.attempt for r in found.values()}
        if not all(r.found and not r.missing and _members(r.members) == tuple(parts[n])
                   for n, r in found.items()) or len(attempts) != 1:
            return None
        first = next(iter(found.values()))
        return Taken(name, first.attempt, first.created_at,
                     {n: _members(r.members) for n, r in found.items()}, {}, existed=True)

    # -- taking ----------------------------------------------------------------------------
    def create(self, name: str, parts: Mapping[str, Sequence[Member]], lease: float) -> Taken:
        """Take group ``name`` whose members on each node are ``parts[node]``, frozen on
        each node at most ``lease`` seconds. Temporary when a lease ended first or a node
        could not be reached (nothing kept: retry); a node's own error otherwise."""
        if not parts or any(not m for m in parts.values()):
            raise ValueError("every node of a group needs members")
        done = self.whole(name, parts)
        if done is not None:
            return done
        nodes = sorted(parts)
        attempt = uuid.uuid4().hex
        log.info("group across nodes: preparing group=%s attempt=%s nodes=%s lease=%.1f",
                 name, attempt, ",".join(nodes), lease)
        try:
            self._prepare_all(attempt, name, parts, nodes, lease)
            self.checkpoint("prepared")
            instant = time.time()
            windows = self._commit_all(attempt, name, nodes, instant, lease)
        except BaseException as exc:
            log.warning("group across nodes: aborting group=%s attempt=%s error=%s", name,
                        attempt, exc)
            self._abort_all(attempt, name, nodes)
            raise
        self.checkpoint("committed")
        log.info("group across nodes: taken group=%s attempt=%s windows_ms=%s", name, attempt,
                 ",".join(f"{n}:{w * 1000:.0f}" for n, w in windows.items()))
        return Taken(name, attempt, instant, {n: tuple(parts[n]) for n in nodes}, windows)

    def _prepare_all(self, attempt: str, name: str, parts: Mapping[str, Sequence[Member]],
                     nodes: Sequence[str], lease: float) -> None:
        pool = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="group-prepare")
        try:
            pending: dict[Future[pb.GroupPhaseReply], str] = {
                pool.submit(self.connect(n).prepare_group, attempt, name, parts[n], nodes, lease,
                            timeout=self.prepare_timeout): n for n in nodes}
            lease_end: float | None = None   # CLOCK_MONOTONIC: the earliest lease's end
            while pending:
                left = None if lease_end is None else lease_end - time.monotonic()
                if left is not None and left <= 0:
                    raise Temporary(f"group {name!r}: the lease of a frozen node ended before "
                                    f"{', '.join(sorted(pending.values()))} was frozen",
                                    retry_after=1.0)
                finished, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
                for future in finished:
                    node = pending.pop(future)
                    reply = future.result()  # the node's error, as a StateholdError
                    if reply.state != "READY":
                        raise Temporary(f"group {name!r}: node {node} answered {reply.state} "
                                        f"({reply.reason}) to PREPARE", retry_after=1.0)
                    end = time.monotonic() + reply.lease_left
                    lease_end = end if lease_end is None else min(lease_end, end)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _commit_all(self, attempt: str, name: str, nodes: Sequence[str], instant: float,
                    lease: float) -> dict[str, float]:
        replies = self._each(nodes, lambda n: self.connect(n).commit_group(
            attempt, name, instant, timeout=lease + self.commit_grace))
        lost = [(n, r) for n, r in zip(nodes, replies, strict=True) if r.state != "DONE"]
        if lost:
            node, reply = lost[0]
            raise Temporary(f"group {name!r}: node {node} answered {reply.state} ({reply.reason}) "
                            "to COMMIT; nothing was kept", retry_after=1.0)
        return {n: r.window_seconds for n, r in zip(nodes, replies, strict=True)}

    def _abort_all(self, attempt: str, name: str, nodes: Sequence[str]) -> None:
        def one(node: str) -> None:
            try:
                self.connect(node).abort_group(attempt, name, timeout=self.abort_timeout)
            except StateholdError as exc:  # it aborts by itself at its lease's end
                log.warning("group across nodes: ABORT not delivered group=%s attempt=%s "
                            "node=%s error=%s", name, attempt, node, exc)

        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="group-abort") as pool:
            list(pool.map(one, nodes))

    @staticmethod
    def _each(nodes: Sequence[str], call: Callable[[str], pb.GroupPartReply | pb.GroupPhaseReply]
              ) -> list[Any]:
        """``call`` on every node side by side; the first error (by node order) is raised
        once all ended."""
        with ThreadPoolExecutor(max_workers=max(1, len(nodes)), thread_name_prefix="group") as pool:
            futures = [pool.submit(call, n) for n in nodes]
        results = []
        for node, future in zip(nodes, futures, strict=True):
            exc = future.exception()
            if exc is not None:
                if isinstance(exc, StateholdError):
                    raise exc
                raise Unavailable(f"node {node}: {exc}") from exc
            results.append(future.result())
        return results
