"""Snapshots: a read-only copy of a volume's backing file at one instant.

The copy is the pool layout's (:mod:`layouts`): a reflink of the file (``file``), or a
read-only snapshot of the volume's subvolume (``subvolume``: its cost does not grow with the
file's extents; frozen, the window holds the snapshot ioctl alone). What follows describes
the ``file`` layout.

When the volume is mounted and ``freeze`` is asked for, the file is reflinked whole while the
volume runs, and the filesystem is frozen only to share again what changed since
(:func:`catchup.copy_frozen`; the freeze flushes dirty data through the direct-I/O loop
device into the file; a keeper process thaws on a timeout or if we die). When it is
mounted without freeze, ``syncfs`` still pushes what the filesystem has; an attached
block volume gets its buffer cache flushed. Snapshot files are chmod 0444 and are
independent files: deleting the source volume leaves them intact.
"""

from __future__ import annotations

import logging
import time

from statehold.engine import catchup, layouts, loop, mounts
from statehold.engine import freeze as freezing
from statehold.engine.freezekeeper import FreezeKeeper
from statehold.engine.lifecycle import acting, remove_recorded
from statehold.engine.metadata import Metadata, SnapshotRecord
from statehold.engine.names import validate_name
from statehold.engine.poolcontext import PoolContext
from statehold.errors import AlreadyExists, FailedPrecondition, NotFound

log = logging.getLogger("statehold.engine.snapshotting")

READ_ONLY = layouts.READ_ONLY


def _flush(device: str | None, target: str | None) -> None:
    if target is not None:
        freezing.syncfs(target)
    elif device is not None:
        freezing.flush_device(device)


def create(pool: PoolContext, volume: str, name: str, *, freeze: bool,
           freeze_timeout: float = catchup.FREEZE_TIMEOUT,
           keeper: catchup.Keeper = FreezeKeeper) -> SnapshotRecord:
    """Snapshot ``volume`` as ``name`` (idempotent for the same volume).

    A mounted volume asked to ``freeze`` is copied by :func:`catchup.copy_frozen`: frozen
    only for the catch-up, by a keeper process that thaws after ``freeze_timeout`` seconds
    or if this process dies (Temporary then: nothing kept, retry). Anything else is one
    FICLONE after a flush (crash-consistent).
    """
    validate_name(volume, what="volume name")
    validate_name(name, what="snapshot name")
    existing = pool.db.snapshot(name)
    if existing is not None:
        if existing.source_volume == volume:
            return existing
        raise AlreadyExists(
            f"snapshot {name!r} exists in pool {pool.name!r} for volume {existing.source_volume!r}")
    rec = pool.db.volume(volume)
    if rec is None:
        raise NotFound(f"volume {volume!r} not found in pool {pool.name!r}")
    src = pool.volume_path(volume)
    devices = loop.find(src)
    targets: list[str] = []
    for dev in devices:
        targets += mounts.writable_targets(dev)
    freeze_target = targets[0] if (freeze and targets) else None
    intent = pool.db.begin_intent("snapshot", name, {"volume": volume, "frozen": freeze_target})
    snap = SnapshotRecord(name=name, source_volume=volume, size=rec.size, mode=rec.mode,
                          fs=rec.fs, formatted=rec.formatted or freeze_target is not None,
                          frozen=freeze_target is not None, created_at=time.time())
    window_ms = "-"
    with acting(pool, intent):
        pool.fault("snapshot.intent")
        window = pool.layout.snapshot(
            volume, name, target=freeze_target,
            flush=lambda: _flush(devices[0] if devices else None, targets[0] if targets else None),
            timeout=freeze_timeout, keeper=keeper,
            frozen=lambda: pool.fault("snapshot.frozen"),
            cloned=lambda: pool.fault("snapshot.cloned"))
        if window is not None:
            window_ms = f"{window.seconds * 1000:.1f}"
        with pool.db.transaction() as db:
            Metadata.insert_snapshot(db, snap)
            Metadata.end_intent(db, intent)
    pool.fault("snapshot.commit")
    log.info("snapshot created snapshot=%s/%s volume=%s frozen=%s window_ms=%s", pool.name, name,
             volume, snap.frozen, window_ms)
    return snap


def delete(pool: PoolContext, name: str) -> None:
    validate_name(name, what="snapshot name")
    if pool.db.snapshot(name) is None:
        raise NotFound(f"snapshot {name!r} not found in pool {pool.name!r}")
    path = pool.snapshot_path(name)
    devices = loop.find(path)
    if devices:
        raise FailedPrecondition(f"snapshot {name!r} is attached as {devices[0]}; detach it first")
    remove_recorded(pool, "delete_snapshot", "snapshots", name, pool.layout.snapshot_entry(name))
    log.info("snapshot deleted snapshot=%s/%s", pool.name, name)
