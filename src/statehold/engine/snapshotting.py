"""Snapshots: a read-only reflink of a volume's backing file at one instant.

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
import os
import time

from statehold.engine import catchup, loop, mounts
from statehold.engine import freeze as freezing
from statehold.engine.ficlone import reflink
from statehold.engine.files import fsync_dir
from statehold.engine.freezekeeper import FreezeKeeper
from statehold.engine.lifecycle import acting, remove_recorded
from statehold.engine.metadata import Metadata, SnapshotRecord
from statehold.engine.names import validate_name
from statehold.engine.poolcontext import PoolContext
from statehold.errors import AlreadyExists, FailedPrecondition, NotFound

log = logging.getLogger("statehold.engine.snapshotting")

READ_ONLY = 0o444


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
    dst = pool.snapshot_path(name)
    intent = pool.db.begin_intent("snapshot", name, {"volume": volume, "frozen": freeze_target})
    snap = SnapshotRecord(name=name, source_volume=volume, size=rec.size, mode=rec.mode,
                          fs=rec.fs, formatted=rec.formatted or freeze_target is not None,
                          frozen=freeze_target is not None, created_at=time.time())
    window_ms = "-"
    with acting(pool, intent):
        pool.fault("snapshot.intent")
        if freeze_target is None:
            # one FICLONE: the only atomic copy of a file that is still being written
            _flush(devices[0] if devices else None, targets[0] if targets else None)
            pool.fault("snapshot.frozen")
            reflink(src, dst, mode=READ_ONLY)
            pool.fault("snapshot.cloned")
        else:
            window = catchup.copy_frozen(
                src, dst, freeze_target, timeout=freeze_timeout, keeper=keeper,
                frozen=lambda: pool.fault("snapshot.frozen"),
                cloned=lambda: pool.fault("snapshot.cloned"))
            window_ms = f"{window.seconds * 1000:.1f}"
        os.chmod(dst, READ_ONLY)
        fsync_dir(pool.snapshots_dir)
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
    remove_recorded(pool, "delete_snapshot", "snapshots", name, path)
    log.info("snapshot deleted snapshot=%s/%s", pool.name, name)
