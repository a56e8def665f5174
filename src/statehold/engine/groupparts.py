r"""One node's part of a group snapshot whose members live on several nodes.

The node agents coordinate such a group in two phases (docs/design/group-snapshots.md,
"Members on several nodes"): every node :func:`prepare`\ s its members (early copies, then every mounted
member frozen by one keeper, whose watchdog is the part's lease) and holds them as a
:class:`HeldPart`; once all nodes hold theirs, the coordinator picks the instant and each
part :meth:`HeldPart.commit`\ s (catch up, thaw, keep) or :meth:`HeldPart.abort`\ s. A
part's record is the group record of :mod:`groups` with two more keys: ``attempt`` (which
coordination made it) and ``nodes``. The steps and crash rules are the single-node
group's (:mod:`groups`); this module only splits them at the freeze.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from statehold.engine import catchup, groups
from statehold.engine.files import fsync_dir
from statehold.engine.freezekeeper import FreezeKeeper, Window, check_timeout
from statehold.engine.poolcontext import PoolContext
from statehold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Temporary

log = logging.getLogger(__name__)


def read_part(pool: PoolContext, name: str) -> dict[str, Any] | None:
    """The group's raw record in this pool (with a cross-node part's ``attempt`` and
    ``nodes`` keys), or None."""
    raw = groups.raw_record(pool, name)
    if raw is None:
        return None
    groups.decode(name, raw)  # refuses a newer version
    doc: dict[str, Any] = json.loads(raw)
    return doc


def discard_part(pools: Mapping[str, PoolContext], name: str, attempt: str | None = None) -> bool:
    """Delete this node's part of group ``name`` (member snapshots, then records); with
    ``attempt``, only a part that attempt committed. True if something was deleted."""
    docs = [d for d in (read_part(p, name) for p in pools.values()) if d is not None]
    if not docs or (attempt is not None and all(d.get("attempt") != attempt for d in docs)):
        return False
    members = [groups.Member(str(p), str(v), str(s)) for d in docs for p, v, s in d["members"]]
    groups.remove_members(pools, name, dict.fromkeys(members))
    log.info("group snapshot part deleted group=%s attempt=%s", name, attempt or "-")
    return True


class HeldPart:
    """This node's members of a cross-node group, frozen and waiting for the decision.

    Made by :func:`prepare`; exactly one of :meth:`commit` or :meth:`abort` ends it (abort
    after commit is a no-op here: deleting a committed part is :func:`discard_part`). The
    caller holds the member pools' locks from :func:`prepare` until then."""

    def __init__(self, pools: Mapping[str, PoolContext], name: str, members: tuple[groups.Member, ...],
                 plans: list[groups.Plan], intents: list[tuple[PoolContext, int]],
                 holder: FreezeKeeper | None, before: dict[groups.Member, catchup.Prepared],
                 timeout: float) -> None:
        self.pools = pools
        self.name = name
        self.members = members
        self._plans = plans
        self._intents = intents
        self._holder = holder
        self._before = before
        self.timeout = timeout
        self.frozen = sum(1 for p in plans if p.target is not None)
        self.frozen_at = time.monotonic()
        """When every member of this node was frozen (CLOCK_MONOTONIC): the lease ends
        ``timeout`` seconds after the first FIFREEZE began, a little before this + timeout."""
        self._ended = False

    @property
    def lease_left(self) -> float:
        return max(0.0, self.frozen_at + self.timeout - time.monotonic())

    def commit(self, created_at: float, *, attempt: str, nodes: Sequence[str]) -> groups.GroupSnapshot:
        """Catch up, thaw, keep. Temporary (and everything rolled back) if the lease had
        ended (the keeper's watchdog thawed first): the part is then not of the instant."""
        if self._ended:
            raise InvalidArgument(f"group snapshot {self.name!r}: this part was already decided")
        self._ended = True
        fault = next(iter(self.pools.values())).fault
        window: Window | None = None
        try:
            jobs = [functools.partial(groups.clone_member, p, self._before.get(p.member), fault)
                    for p in self._plans if p.target is not None]
            groups.side_by_side(jobs)
            fault("group.cloned")
            if self._holder is not None:
                window = self._holder.thaw()
                if window.expired:
                    raise Temporary(f"group snapshot {self.name!r}: the lease of {self.timeout:g} s "
                                    "ended before the commit, so the watchdog thawed first; "
                                    "nothing was kept", retry_after=1.0)
            fault("group.thawed")
            for p in self._plans:
                p.pool.layout.seal(p.member.snapshot)
            for pool in self.pools.values():
                fsync_dir(pool.snapshots_dir)
            record = groups.encode(self.members, created_at, attempt=attempt, nodes=sorted(nodes))
            groups.commit_records(self.pools, self._plans, self._intents, self.name, record,
                                  created_at)
        except BaseException:
            self._rollback()
            raise
        finally:
            if self._holder is not None:
                self._holder.close()
        fault("group.commit")
        seconds = window.seconds if window is not None else None
        log.info("group snapshot part committed group=%s attempt=%s members=%d frozen=%d "
                 "window_ms=%s", self.name, attempt, len(self.members), self.frozen,
                 "-" if seconds is None else f"{seconds * 1000:.1f}")
        return groups.GroupSnapshot(self.name, self.members, created_at, frozen=self.frozen,
                             window=seconds, freezing=window.freezing if window else None)

    def abort(self) -> None:
        """Thaw and roll back (idempotent; nothing once committed)."""
        if self._ended:
            return
        self._ended = True
        self._rollback()

    def _rollback(self) -> None:
        if self._holder is not None:
            self._holder.close()  # thaw before anything else
        for pool, intent in self._intents:
            pool.settle(intent)
        self._intents = []


def prepare(pools: Mapping[str, PoolContext], name: str, members: Sequence[groups.Member], *,
            timeout: float = groups.DEFAULT_TIMEOUT, keeper: catchup.Keeper = FreezeKeeper) -> HeldPart:
    """Phase 1 of a group across nodes on this node: early copies, then every mounted
    member frozen by a keeper whose watchdog ends the lease (``timeout``); returns the
    held part. A part of this group already here (an earlier attempt) is deleted first.

    NotFound: a pool or volume; AlreadyExists: the name with other members, or a member's
    snapshot name taken outside the group; FailedPrecondition: a member attached but not
    mounted (a block volume in use: nothing would stop its writers); InvalidArgument: bad
    names or timeout. The caller holds the pools' locks until the part is decided.
    """
    wanted = groups.check_members(name, members)
    check_timeout(timeout, most=groups.MAX_TIMEOUT)
    missing_pools = sorted({m.pool for m in wanted} - set(pools))
    if missing_pools:
        raise NotFound(f"pool {missing_pools[0]!r} not found")
    involved = {p: pools[p] for p in sorted({m.pool for m in wanted})}
    if _existing_part(involved, name, wanted):
        discard_part(involved, name)
    plans = groups.plan_members(involved, wanted)
    busy = [p.member for p in plans if p.target is None and p.device is not None]
    if busy:
        raise FailedPrecondition(
            f"volume {busy[0].pool}/{busy[0].volume} is attached but not mounted here (a block "
            "volume in use): a group across nodes can only hold filesystems it can freeze")
    fault = next(iter(involved.values())).fault
    to_freeze = [p for p in plans if p.target is not None]
    holder = keeper(timeout, wait_ready=False) if to_freeze else None
    intents: list[tuple[PoolContext, int]] = []
    try:
        groups.begin_intents(plans, name, intents)
        fault("group.intent")
        before: dict[groups.Member, catchup.Prepared] = {}
        for p in to_freeze:
            groups.precopy(p, before)
            fault("group.member_precloned")
        for p in to_freeze:
            groups.flush_member(p)
        for p in plans:
            if p.target is None:  # not attached: no writer (the pool lock keeps it so)
                p.pool.layout.window_copy(p.member.volume, p.member.snapshot, None)
        groups.freeze_members(involved, holder, to_freeze, fault)
        fault("group.frozen")
    except BaseException:
        if holder is not None:
            holder.close()
        for pool, intent in intents:
            pool.settle(intent)
        raise
    return HeldPart(involved, name, wanted, plans, intents, holder, before, timeout)


def _existing_part(pools: Mapping[str, PoolContext], name: str, members: tuple[groups.Member, ...]) -> bool:
    """Whether a part of this group is here (to be replaced); AlreadyExists when the name
    holds other members or a member's snapshot name is taken outside the group."""
    docs = {p: read_part(pool, name) for p, pool in pools.items()}
    for doc in docs.values():
        if doc is not None and tuple(groups.Member(str(p), str(v), str(s))
                                     for p, v, s in doc["members"]) != members:
            raise AlreadyExists(f"group snapshot {name!r} exists with other members")
    held = {p for p, doc in docs.items() if doc is not None}
    for m in members:
        snap = pools[m.pool].db.snapshot(m.snapshot)
        if snap is not None and (snap.source_volume != m.volume or m.pool not in held):
            raise AlreadyExists(f"snapshot {m.pool}/{m.snapshot} already exists "
                                f"(of volume {snap.source_volume!r}), outside group {name!r}")
    return bool(held)
