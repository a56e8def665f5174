"""A node's side of group snapshots across nodes: PREPARE, COMMIT, ABORT per attempt.

The coordinator (:mod:`statehold.agent.groupcoordinator`) asks every involved node to
prepare (early copies, then its members frozen under a *lease*: its freeze keeper's
watchdog), and once all are READY to commit (catch up, thaw, keep); on any failure to
abort (thaw, discard). docs/design/group-snapshots.md has the states, the repeats and every
failure case; this module is their implementation on one node.

Each attempt runs on a thread of its own: the engine's pool locks and the freeze keeper are
held by the thread that prepared them, across the two RPCs (each served on whatever gRPC
thread). The thread waits for the decision until the lease ends, then aborts by itself: a
node that lost its coordinator thaws (the keeper already did, at the same deadline) and
rolls back without being told. If the agent dies, the keeper thaws at once (end of file on
its stdin) and the pool's recovery rolls the intents back at the next open.

Who may decide: a ``node`` caller may prepare only a group whose node list names it, and
only the identity that prepared an attempt (or a ``controller``) may commit or abort it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from statehold.agent.pause import NO_PAUSE, Pauser
from statehold.engine import capacity, groupparts, groups
from statehold.engine.freezekeeper import check_timeout
from statehold.engine.groupparts import HeldPart
from statehold.engine.groups import Member
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StateholdError,
    Temporary,
    Unavailable,
)

log = logging.getLogger("statehold.agent.groups")

PREPARING, READY, DONE, ABORTED = "PREPARING", "READY", "DONE", "ABORTED"
ATTEMPT_ID = re.compile(r"[0-9a-f]{32}")

KEEP_SECONDS = 600.0
"""How long a decided attempt is remembered (to answer repeats)."""
KEEP_MOST = 256
MARGIN = 1.0
"""Seconds past the lease the attempt's thread waits before it aborts by itself (the keeper
has thawed at the lease already; this only orders the roll-back after it)."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: str    # node | controller

    def __str__(self) -> str:
        return f"{self.role}/{self.name}"


@dataclass(frozen=True, slots=True)
class Phase:
    """What a PREPARE, COMMIT or ABORT answers."""

    id: str
    state: str
    reason: str = ""
    frozen: int = 0
    lease_left: float = 0.0
    window: float = 0.0


@dataclass(frozen=True, slots=True)
class Part:
    """This node's part of a committed group."""

    name: str
    found: bool
    attempt: str = ""
    members: tuple[Member, ...] = ()
    missing: tuple[Member, ...] = ()
    created_at: float = 0.0
    nodes: tuple[str, ...] = ()


@dataclass(eq=False)
class _Attempt:
    id: str
    name: str
    members: tuple[Member, ...]
    nodes: tuple[str, ...]
    lease: float
    caller: Caller
    state: str = PREPARING
    reason: str = ""
    error: BaseException | None = None
    frozen: int = 0
    window: float = 0.0
    deadline: float = 0.0               # CLOCK_MONOTONIC: the lease's end here
    decision: tuple[str, float] | None = None
    decided_at: float = 0.0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def phase(self) -> Phase:
        left = max(0.0, self.deadline - time.monotonic()) if self.state == READY else 0.0
        return Phase(self.id, self.state, self.reason, self.frozen, left, self.window)


def check_attempt(attempt_id: str, name: str) -> None:
    if not ATTEMPT_ID.fullmatch(attempt_id):
        raise InvalidArgument(f"group attempt id {attempt_id!r} must be 32 hex digits")
    if not name:
        raise InvalidArgument("a group snapshot needs a name")


class GroupFreezes:
    """The attempts of this node (the servicer's group port). Thread-safe."""

    def __init__(self, node: Node, node_name: str, *, pauser: Pauser = NO_PAUSE,
                 keep: float = KEEP_SECONDS) -> None:
        self.node = node
        self.node_name = node_name
        self.pauser = pauser
        self.keep = keep
        self._lock = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}

    # -- the RPCs --------------------------------------------------------------------------
    def prepare(self, caller: Caller, attempt_id: str, name: str, members: Sequence[Member],
                nodes: Sequence[str], lease: float, *, wait: float = 3600.0) -> Phase:
        check_attempt(attempt_id, name)
        check_timeout(lease, most=groups.MAX_TIMEOUT)
        if caller.role != "controller" and caller.name not in nodes:
            raise PermissionDenied(f"{caller} may coordinate only a group it takes part in; "
                                   f"this one's nodes are {', '.join(nodes) or 'none'}")
        if self.node_name not in nodes:
            raise InvalidArgument(f"the group's nodes do not name this node ({self.node_name})")
        wanted = groups.check_members(name, [Member(m.pool, m.volume, m.snapshot) for m in members])
        superseded: list[_Attempt] = []
        with self._lock:
            self._forget_old()
            attempt = self._attempts.get(attempt_id)
            if attempt is None:
                superseded = [a for a in self._attempts.values()
                              if a.name == name and a.state in (PREPARING, READY)]
                attempt = _Attempt(attempt_id, name, wanted, tuple(nodes), lease, caller)
                self._attempts[attempt_id] = attempt
                fresh = True
            else:
                fresh = False
        if not fresh:
            self._allowed(caller, attempt)
            if attempt.state == ABORTED and not attempt.members:  # its ABORT came first
                return attempt.phase()
            if attempt.members != wanted:
                raise InvalidArgument(f"attempt {attempt_id} was prepared with other members")
        else:
            for old in superseded:  # the newer coordinator wins
                log.warning("group attempt superseded group=%s old=%s new=%s", name, old.id,
                            attempt_id)
                self._decide(old, ("abort", 0.0), wait=wait, reason="superseded by a newer attempt")
            threading.Thread(target=self._run, args=(attempt,), name=f"group-{attempt_id[:8]}",
                             daemon=True).start()
        with attempt.cond:
            attempt.cond.wait_for(lambda: attempt.state != PREPARING, wait)
            if attempt.error is not None:
                raise attempt.error
            return attempt.phase()

    def commit(self, caller: Caller, attempt_id: str, name: str, instant: float, *,
               wait: float = 3600.0) -> Phase:
        check_attempt(attempt_id, name)
        attempt = self._known(attempt_id)
        if attempt is None:
            return self._unknown(attempt_id, name)
        self._allowed(caller, attempt)
        self.pauser.point("group.commit")
        return self._decide(attempt, ("commit", instant), wait=wait)

    def abort(self, caller: Caller, attempt_id: str, name: str, *, wait: float = 3600.0) -> Phase:
        check_attempt(attempt_id, name)
        attempt = self._known(attempt_id)
        if attempt is None:
            self._discard(name, attempt_id)
            with self._lock:  # a PREPARE still on its way must not freeze any more
                attempt = self._attempts.setdefault(attempt_id, _Attempt(
                    attempt_id, name, (), (), 0.0, caller, state=ABORTED,
                    reason="unknown attempt", decided_at=time.monotonic()))
            return attempt.phase()
        self._allowed(caller, attempt)
        phase = self._decide(attempt, ("abort", 0.0), wait=wait)
        if phase.state == DONE:  # the coordinator lost another node: discard what was kept
            self._discard(name, attempt_id)
            with attempt.cond:
                attempt.state, attempt.reason = ABORTED, "aborted after commit"
                attempt.cond.notify_all()
            return attempt.phase()
        return phase

    def part(self, caller: Caller, name: str, *, delete: bool = False) -> Part:
        """This node's part of group ``name`` (found = False: none); ``delete``: delete it
        (a node caller only for a part whose nodes name it)."""
        if not name:
            raise InvalidArgument("a group snapshot needs a name")
        pools = self._pools_with(name)
        doc = next((d for d in (groupparts.read_part(p, name) for p in pools.values()) if d), None)
        if doc is None:
            return Part(name, found=False)
        nodes = tuple(str(n) for n in doc.get("nodes") or ())
        members = tuple(Member(str(p), str(v), str(s)) for p, v, s in doc["members"])
        if delete:
            if caller.role != "controller" and caller.name not in nodes:
                raise PermissionDenied(f"{caller} may delete only a group it takes part in")
            with contextlib.ExitStack() as held:
                for n in sorted(pools):
                    held.enter_context(pools[n].exclusive())
                groupparts.discard_part(pools, name)
            return Part(name, True, str(doc.get("attempt", "")), members, (),
                        float(doc["created_at"]), nodes)
        whole = groups.with_missing(groups.GroupSnapshot(name, members, float(doc["created_at"])),
                                    pools)
        return Part(name, True, str(doc.get("attempt", "")), members, whole.missing,
                    whole.created_at, nodes)

    def close(self) -> None:
        """Abort every attempt still held (the agent stops)."""
        with self._lock:
            held = [a for a in self._attempts.values() if a.state in (PREPARING, READY)]
        for attempt in held:
            self._decide(attempt, ("abort", 0.0), wait=30.0, reason="the agent is stopping")

    # -- the attempt's thread ------------------------------------------------------------------
    def _run(self, attempt: _Attempt) -> None:
        part: HeldPart | None = None
        try:
            with contextlib.ExitStack() as locks:
                pools = self._lock_pools(attempt, locks)
                part = groupparts.prepare(pools, attempt.name, attempt.members, timeout=attempt.lease)
                with attempt.cond:
                    attempt.deadline = part.frozen_at + attempt.lease
                    attempt.frozen = part.frozen
                    if attempt.decision is None:
                        attempt.state = READY
                        log.info("group part ready group=%s attempt=%s frozen=%d lease=%.1f",
                                 attempt.name, attempt.id, part.frozen, attempt.lease)
                    attempt.cond.notify_all()
                    attempt.cond.wait_for(lambda: attempt.decision is not None,
                                          max(0.0, attempt.deadline + MARGIN - time.monotonic()))
                    decision = attempt.decision
                self._finish(attempt, part, decision)
        except Exception as exc:
            if part is not None:
                part.abort()
            self._end(attempt, ABORTED, str(exc), error=exc if attempt.state == PREPARING else None)
            if not isinstance(exc, StateholdError):
                log.exception("group attempt failed group=%s attempt=%s", attempt.name, attempt.id)
            else:
                log.info("group attempt failed group=%s attempt=%s error=%s", attempt.name,
                         attempt.id, exc)

    def _finish(self, attempt: _Attempt, part: HeldPart,
                decision: tuple[str, float] | None) -> None:
        if decision is None:
            part.abort()
            log.warning("group part expired: no decision within the lease group=%s attempt=%s "
                        "coordinator=%s", attempt.name, attempt.id, attempt.caller)
            self._end(attempt, ABORTED, "expired")
            return
        verb, instant = decision
        if verb != "commit":
            part.abort()
            self._end(attempt, ABORTED, attempt.reason or "aborted")
            return
        try:
            taken = part.commit(instant, attempt=attempt.id, nodes=attempt.nodes)
        except Temporary:
            self._end(attempt, ABORTED, "expired")
            return
        with attempt.cond:
            attempt.window = taken.window or 0.0
        self._end(attempt, DONE, "")

    def _end(self, attempt: _Attempt, state: str, reason: str,
             error: BaseException | None = None) -> None:
        with attempt.cond:
            attempt.state, attempt.reason, attempt.error = state, reason, error
            attempt.decided_at = time.monotonic()
            attempt.cond.notify_all()

    def _lock_pools(self, attempt: _Attempt, locks: contextlib.ExitStack) -> dict[str, Pool]:
        self.node.refresh()  # pools created or imported beside the agent
        pools: dict[str, Pool] = {}
        for name in sorted({m.pool for m in attempt.members}):
            pool = self.node.pool(name)
            locks.enter_context(pool.exclusive())
            if groups.read(pool, attempt.name) is None:
                capacity.refuse_new(pool.space(), f"group snapshot {attempt.name!r}")
            pools[name] = pool
        return pools

    # -- helpers -------------------------------------------------------------------------
    def _decide(self, attempt: _Attempt, decision: tuple[str, float], *, wait: float,
                reason: str = "") -> Phase:
        with attempt.cond:
            if attempt.decision is None and attempt.state in (PREPARING, READY):
                attempt.decision = decision
                if reason:
                    attempt.reason = reason
                attempt.cond.notify_all()
            if not attempt.cond.wait_for(lambda: attempt.state in (DONE, ABORTED), wait):
                raise Unavailable(f"group attempt {attempt.id} is still being decided")
            return attempt.phase()

    def _allowed(self, caller: Caller, attempt: _Attempt) -> None:
        if caller.role != "controller" and caller != attempt.caller:
            raise PermissionDenied(f"{caller} may not decide group attempt {attempt.id}: "
                                   f"{attempt.caller} prepared it")

    def _known(self, attempt_id: str) -> _Attempt | None:
        with self._lock:
            return self._attempts.get(attempt_id)

    def _unknown(self, attempt_id: str, name: str) -> Phase:
        """An id this agent does not know (it restarted): DONE if a part records it."""
        for pool in self._pools_with(name).values():
            doc = groupparts.read_part(pool, name)
            if doc is not None and doc.get("attempt") == attempt_id:
                return Phase(attempt_id, DONE)
        return Phase(attempt_id, ABORTED, "unknown attempt")

    def _discard(self, name: str, attempt_id: str) -> None:
        pools = self._pools_with(name)
        with contextlib.ExitStack() as held:
            for n in sorted(pools):
                held.enter_context(pools[n].exclusive())
            groupparts.discard_part(pools, name, attempt_id)

    def _pools_with(self, name: str) -> dict[str, Pool]:
        """Every open pool of this node holding a record of ``name`` (NotFound: none open)."""
        self.node.refresh()
        found: dict[str, Pool] = {}
        for pool in self.node.pools():
            with contextlib.suppress(NotFound, Unavailable, FailedPrecondition):
                if groups.read(pool, name) is not None:
                    found[pool.name] = pool
        return found

    def _forget_old(self) -> None:
        now = time.monotonic()
        done = sorted((a for a in self._attempts.values() if a.state in (DONE, ABORTED)),
                      key=lambda a: a.decided_at)
        for a in done:
            if now - a.decided_at > self.keep or len(self._attempts) > KEEP_MOST:
                del self._attempts[a.id]
