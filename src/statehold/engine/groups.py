"""Group snapshots: one instant across several volumes of this host.

Every member's mounted filesystem is frozen (by a :class:`FreezeKeeper` child process, so
no filesystem stays frozen if this process dies), then every member is reflinked, then all
are thawed: the snapshots hold the volumes as they were at one instant, crash-consistent
as a set. A mounted member is reflinked whole *before* the freeze (the part whose cost
grows with the volume's extents) and only the ranges it rewrote since are shared again
inside the window (:mod:`catchup`). Block volumes and unmounted ones need no freeze: their buffered writes
are flushed inside the window and they are reflinked whole there (one FICLONE is atomic;
a catch-up of several ranges of a volume still being written would not be). In a pool of
layout ``subvolume`` nothing is copied early: the window holds one subvolume snapshot per
member, whose cost does not grow with extents (the copying is the pool layout's,
:mod:`layouts`).

Crash safety reuses the pool's intent journal: each member is one ``snapshot`` intent
(payload ``frozen`` = the mount point the keeper froze), so recovery thaws and rolls back
an unfinished member exactly as for a single snapshot. A pool's members, and the group's
record, are committed in one transaction per pool: in the usual one-pool group all appear
or none. The record lives in the pool database's ``meta`` table under ``group/<name>``
(JSON ``{"version": 1, "members": [[pool, volume, snapshot], ...], "created_at": t}``);
every pool holding a member holds the record. See docs/design/group-snapshots.md.

The caller holds the lock of every pool involved (``Node.snapshot_group`` takes them in
name order). Steps reported to the fault hook are ``STEPS["snapshot_group"]``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from statehold.engine import catchup, loop, mounts, snapshotting
from statehold.engine import freeze as freezing
from statehold.engine.files import fsync_dir
from statehold.engine.freezekeeper import FreezeKeeper, Window, check_timeout
from statehold.engine.metadata import Metadata, SnapshotRecord
from statehold.engine.names import validate_name
from statehold.engine.poolcontext import PoolContext
from statehold.errors import AlreadyExists, InvalidArgument, NotFound, Temporary

log = logging.getLogger("statehold.engine.groups")

DEFAULT_TIMEOUT = 10.0
"""Seconds a group's filesystems may stay frozen before the keeper thaws them anyway."""

MAX_TIMEOUT = 600.0

CLONE_THREADS = 4
"""Members cloned side by side inside the window."""
RECORD_VERSION = 1
KEY_PREFIX = "group/"

Keeper = Callable[[float], FreezeKeeper]


@dataclass(frozen=True, slots=True)
class Member:
    """One volume of a group and the name its snapshot gets in that volume's pool."""

    pool: str
    volume: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    name: str
    members: tuple[Member, ...]
    created_at: float
    missing: tuple[Member, ...] = ()
    """Members whose snapshot is gone (deleted on its own, or a multi-pool commit cut short
    by a crash): the group is no longer whole."""
    frozen: int = 0
    """Filesystems frozen for this group (known only to the call that took it)."""
    window: float | None = None
    """Seconds from the first freeze to the last thaw (only on the call that took it; None
    when nothing needed freezing)."""
    freezing: float | None = None
    """The part of ``window`` spent in FIFREEZE itself (the rest: catch-up, clones, thaw)."""

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True, slots=True)
class Plan:
    member: Member
    pool: PoolContext
    size: int
    mode: str
    fs: str | None
    formatted: bool
    device: str | None
    target: str | None      # the writable mount point to freeze, if mounted


# -- records ---------------------------------------------------------------------------------

def record_key(name: str) -> str:
    return KEY_PREFIX + name


def raw_record(pool: PoolContext, name: str) -> str | None:
    """The group's record in this pool as stored (JSON), or None."""
    with pool.db.transaction() as db:
        row = db.execute("SELECT value FROM meta WHERE key=?", (record_key(name),)).fetchone()
    return None if row is None else str(row[0])


def read(pool: PoolContext, name: str) -> GroupSnapshot | None:
    """The group's record in this pool (members not checked), or None."""
    raw = raw_record(pool, name)
    return None if raw is None else decode(name, raw)


def names(pool: PoolContext) -> list[str]:
    """Names of the groups recorded in this pool, sorted."""
    with pool.db.transaction() as db:
        rows = db.execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                          (len(KEY_PREFIX), KEY_PREFIX)).fetchall()
    return [r[0].removeprefix(KEY_PREFIX) for r in rows]


def decode(name: str, raw: str) -> GroupSnapshot:
    doc = json.loads(raw)
    if int(doc.get("version", 0)) > RECORD_VERSION:
        raise InvalidArgument(f"group snapshot {name!r} has record version {doc['version']}; "
                              f"this build reads up to {RECORD_VERSION}")
    members = tuple(Member(str(p), str(v), str(s)) for p, v, s in doc["members"])
    return GroupSnapshot(name=name, members=members, created_at=float(doc["created_at"]))


def encode(members: Sequence[Member], created_at: float, **extra: Any) -> str:
    """A group record; ``extra`` keys follow the common ones (a cross-node part's
    ``attempt`` and ``nodes``)."""
    return json.dumps({"version": RECORD_VERSION, "created_at": created_at,
                       "members": [[m.pool, m.volume, m.snapshot] for m in members], **extra})


def with_missing(group: GroupSnapshot, pools: Mapping[str, PoolContext]) -> GroupSnapshot:
    """The group with ``missing`` filled in from the member pools (a pool not given, or
    not open, counts its members as missing)."""
    gone = tuple(m for m in group.members
                 if m.pool not in pools or pools[m.pool].db.snapshot(m.snapshot) is None)
    return GroupSnapshot(group.name, group.members, group.created_at, missing=gone)


# -- validation ------------------------------------------------------------------------------

def check_members(name: str, members: Sequence[Member]) -> tuple[Member, ...]:
    validate_name(name, what="group snapshot name")
    if not members:
        raise InvalidArgument(f"group snapshot {name!r} needs at least one volume")
    seen_vol: set[tuple[str, str]] = set()
    seen_snap: set[tuple[str, str]] = set()
    for m in members:
        validate_name(m.volume, what="volume name")
        validate_name(m.snapshot, what="snapshot name")
        if (m.pool, m.volume) in seen_vol:
            raise InvalidArgument(f"volume {m.pool}/{m.volume} appears twice in group {name!r}")
        if (m.pool, m.snapshot) in seen_snap:
            raise InvalidArgument(f"snapshot name {m.pool}/{m.snapshot} appears twice in "
                                  f"group {name!r}")
        seen_vol.add((m.pool, m.volume))
        seen_snap.add((m.pool, m.snapshot))
    return tuple(members)


def plan_members(pools: Mapping[str, PoolContext], members: Sequence[Member]) -> list[Plan]:
    plans = []
    for m in members:
        pool = pools[m.pool]
        rec = pool.db.volume(m.volume)
        if rec is None:
            raise NotFound(f"volume {m.volume!r} not found in pool {pool.name!r}")
        devices = loop.find(pool.volume_path(m.volume))
        targets = [t for dev in devices for t in mounts.writable_targets(dev)]
        plans.append(Plan(m, pool, rec.size, rec.mode, rec.fs, rec.formatted,
                           devices[0] if devices else None, targets[0] if targets else None))
    return plans


def _existing(pools: Mapping[str, PoolContext], name: str,
              members: tuple[Member, ...]) -> GroupSnapshot | None:
    """The complete group if it was taken already; clears a torn one; None to take it.

    AlreadyExists when the name holds other members, or a member's snapshot name is taken
    by a snapshot no record of this group accounts for.
    """
    records = {p: read(pool, name) for p, pool in pools.items()}
    for rec in records.values():
        if rec is not None and rec.members != members:
            raise AlreadyExists(f"group snapshot {name!r} exists with other members")
    held = {p for p, rec in records.items() if rec is not None}
    for m in members:
        snap = pools[m.pool].db.snapshot(m.snapshot)
        if snap is None:
            continue
        if snap.source_volume != m.volume or m.pool not in held:
            raise AlreadyExists(f"snapshot {m.pool}/{m.snapshot} already exists "
                                f"(of volume {snap.source_volume!r}), outside group {name!r}")
    if not held:
        return None
    created_at = next(rec.created_at for rec in records.values() if rec is not None)
    group = with_missing(GroupSnapshot(name, members, created_at), pools)
    if held == set(pools) and group.complete:
        return group
    # torn: a multi-pool commit cut short, or a member deleted on its own. What is left is
    # not one instant with anything new: remove it and take the whole group again.
    log.warning("group snapshot torn, taking it again group=%s missing=%d pools_with_record=%d/%d",
                name, len(group.missing), len(held), len(pools))
    remove_members(pools, name, members)
    return None


# -- the operation ---------------------------------------------------------------------------

def create(pools: Mapping[str, PoolContext], name: str, members: Sequence[Member], *,
           timeout: float = DEFAULT_TIMEOUT, keeper: Keeper = FreezeKeeper) -> GroupSnapshot:
    """Take (or return, for the same members) group snapshot ``name``.

    NotFound: a pool or volume; AlreadyExists: the name with other members, or a member's
    snapshot name taken; InvalidArgument: bad names, a volume twice, a bad timeout;
    Temporary: the freeze outlasted ``timeout`` (nothing is kept; retry).
    """
    wanted = check_members(name, members)
    check_timeout(timeout, most=MAX_TIMEOUT)
    missing_pools = sorted({m.pool for m in wanted} - set(pools))
    if missing_pools:
        raise NotFound(f"pool {missing_pools[0]!r} not found")
    involved = {p: pools[p] for p in sorted({m.pool for m in wanted})}
    done = _existing(involved, name, wanted)  # first: a retry needs no source any more
    if done is not None:
        return done
    plans = plan_members(involved, wanted)
    first = next(iter(involved.values()))
    fault = first.fault
    to_freeze = [p for p in plans if p.target is not None]
    holder = keeper(timeout) if to_freeze else None
    intents: list[tuple[PoolContext, int]] = []
    window: Window | None = None
    try:
        begin_intents(plans, name, intents)
        fault("group.intent")
        before: dict[Member, catchup.Prepared] = {}
        for p in to_freeze:  # the slow part, outside the window: the volume still runs
            precopy(p, before)
            fault("group.member_precloned")
        for p in plans:  # outside the window: most dirty data goes now, so freezing is short
            flush_member(p)
        freeze_members(involved, holder, to_freeze, fault)
        created_at = time.time()  # the instant: every member is frozen now
        fault("group.frozen")
        for p in plans:
            if p.target is None:
                flush_member(p)  # a block writer's buffered data up to the instant
        side_by_side([functools.partial(clone_member, p, before.get(p.member), fault) for p in plans])
        fault("group.cloned")
        if holder is not None:
            window = holder.thaw()
            if window.expired:
                raise Temporary(f"group snapshot {name!r}: the filesystems were frozen longer "
                                f"than {timeout:g} s, so the watchdog thawed them before every "
                                "member was cloned; nothing was kept", retry_after=1.0)
        fault("group.thawed")
        for p in plans:
            p.pool.layout.seal(p.member.snapshot)
        for pool in involved.values():
            fsync_dir(pool.snapshots_dir)
        commit_records(involved, plans, intents, name, encode(wanted, created_at), created_at)
    except BaseException:
        if holder is not None:
            holder.close()  # thaw before anything else
        for pool, intent in intents:
            pool.settle(intent)
        raise
    finally:
        if holder is not None:
            holder.close()
    fault("group.commit")
    seconds = window.seconds if window is not None else None
    log.info("group snapshot created group=%s members=%d frozen=%d window_ms=%s", name,
             len(plans), len(to_freeze), "-" if seconds is None else f"{seconds * 1000:.1f}")
    return GroupSnapshot(name, wanted, created_at, frozen=len(to_freeze), window=seconds,
                         freezing=window.freezing if window is not None else None)


def begin_intents(plans: Sequence[Plan], name: str,
                  intents: list[tuple[PoolContext, int]]) -> None:
    """One ``snapshot`` intent per member (``frozen``: what recovery must thaw), appended to
    ``intents`` as each is begun, so a failure part way still settles those begun."""
    for p in plans:
        payload: dict[str, Any] = {"volume": p.member.volume, "frozen": p.target, "group": name}
        intents.append((p.pool, p.pool.db.begin_intent("snapshot", p.member.snapshot, payload)))


def freeze_members(pools: Mapping[str, PoolContext], holder: FreezeKeeper | None,
                   to_freeze: Sequence[Plan], fault: Callable[[str], None]) -> None:
    """Open the window: each pool layout's last flush, then every mounted member frozen at
    once by ``holder``."""
    for pool in pools.values():
        pool.layout.before_window()
    if holder is not None:
        holder.freeze([p.target for p in to_freeze if p.target is not None],
                      sent=lambda: fault("group.freezing"))
        for _ in to_freeze:
            fault("group.member_frozen")


def precopy(p: Plan, before: dict[Member, catchup.Prepared]) -> None:
    """Outside the window: the member's early copy, if its pool's layout makes one."""
    prepared = p.pool.layout.precopy(p.member.volume, p.member.snapshot)
    if prepared is not None:
        before[p.member] = prepared


def clone_member(p: Plan, before: catchup.Prepared | None, fault: Callable[[str], None]) -> None:
    """Inside the window: catch a frozen member's early copy up; copy a live one whole
    (one FICLONE: the only atomic copy of a live block volume), or, in a subvolume pool,
    snapshot the member's subvolume."""
    p.pool.layout.window_copy(p.member.volume, p.member.snapshot, before)
    fault("group.member_cloned")


def side_by_side(jobs: Sequence[Callable[[], None]]) -> None:
    """Run the members' clones on a few threads: their ioctls (FIEMAP, FICLONE) spend
    their time in the kernel, without the GIL. Every job finishes before an error is
    raised (the first one), so nothing still writes a member's file during rollback."""
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=min(CLONE_THREADS, len(jobs)),
                            thread_name_prefix="group-clone") as workers:
        done = [workers.submit(job) for job in jobs]
    for future in done:
        future.result()


def flush_member(p: Plan) -> None:
    if p.target is not None:
        freezing.syncfs(p.target)
    elif p.device is not None:
        freezing.flush_device(p.device)


def commit_records(pools: Mapping[str, PoolContext], plans: Sequence[Plan],
                   intents: Sequence[tuple[PoolContext, int]], name: str, record: str,
                   created_at: float) -> None:
    """Per pool, one transaction: its members' rows, the group ``record`` (a whole group's,
    or one node's part of a group across nodes), its intents ended."""
    for pool_name, pool in pools.items():
        with pool.db.transaction() as db:
            for p in plans:
                if p.member.pool != pool_name:
                    continue
                Metadata.insert_snapshot(db, SnapshotRecord(
                    name=p.member.snapshot, source_volume=p.member.volume, size=p.size,
                    mode=p.mode, fs=p.fs, formatted=p.formatted or p.target is not None,
                    frozen=p.target is not None, created_at=created_at))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                       (record_key(name), record))
            for owner, intent in intents:
                if owner is pool:
                    Metadata.end_intent(db, intent)


def delete(pools: Mapping[str, PoolContext], name: str) -> None:
    """Delete the group's member snapshots, then its records (NotFound if no pool given
    holds a record). FailedPrecondition if a member snapshot is attached; a crash or an
    error midway leaves the record, so a retry finishes the job."""
    records = [rec for rec in (read(pool, name) for pool in pools.values()) if rec is not None]
    if not records:
        raise NotFound(f"group snapshot {name!r} not found")
    remove_members(pools, name, records[0].members)
    log.info("group snapshot deleted group=%s", name)


def remove_members(pools: Mapping[str, PoolContext], name: str, members: Iterable[Member]) -> None:
    for m in members:
        pool = pools.get(m.pool)
        if pool is not None and pool.db.snapshot(m.snapshot) is not None:
            snapshotting.delete(pool, m.snapshot)
    for pool in pools.values():
        with pool.db.transaction() as db:
            db.execute("DELETE FROM meta WHERE key=?", (record_key(name),))
