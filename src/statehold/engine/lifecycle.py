"""Volume lifecycle: create (empty or cloned), delete, expand, and mount-time work.

Each mutating operation follows one pattern, which recovery relies on:
record the intent (durable) -> change files (each step followed by the fault hook) ->
one transaction that records the result and deletes the intent. Decisions recorded here:

* create/clone write straight to the volume's entry (``volumes/<name>.img``, or its
  subvolume ``volumes/<name>/`` in a subvolume pool; the file work is the pool layout's,
  :mod:`layouts`): no row exists for that name, so recovery may delete the entry of an
  unfinished create without losing anything;
* expand truncates first and records the new size after: truncating to a larger size is
  idempotent, so recovery finishes an unfinished expand (capacity was checked already);
* the filesystem grows in a separate step driven by the ``grow_pending`` flag, so an
  expand never waits on a filesystem the kernel refuses to grow online (ext4 here).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from statehold.engine import fs, loop, mounts
from statehold.engine.metadata import Metadata, VolumeRecord
from statehold.engine.names import check_size, validate_name
from statehold.engine.poolcontext import PoolContext
from statehold.engine.types import FsType, GrowResult, Source, SourceKind, VolumeMode
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    OutOfRange,
)

log = logging.getLogger("statehold.engine.lifecycle")


@contextlib.contextmanager
def acting(pool: PoolContext, intent: int) -> Iterator[None]:
    """The file-changing part of an operation: on any error, settle the intent at once.

    A crash leaves the intent to start-up recovery; an error (a tool failed, the disk is
    full) must not leave it lying around in a process that keeps running.
    """
    try:
        yield
    except BaseException:
        pool.settle(intent)
        raise


def check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) \
            or ratio < 1.0:
        raise InvalidArgument(f"overprovision_ratio must be a number >= 1.0, got {ratio!r}")
    return float(ratio)


def _mode_fs(mode: VolumeMode | str, fstype: FsType | str | None) -> tuple[VolumeMode, FsType | None]:
    try:
        vmode = VolumeMode(mode)
    except ValueError as exc:
        raise InvalidArgument(f"unknown volume mode {mode!r}: use filesystem or block") from exc
    if vmode is VolumeMode.BLOCK:
        return vmode, None
    if fstype is None:
        return vmode, FsType.XFS
    try:
        return vmode, FsType(fstype)
    except ValueError as exc:
        raise InvalidArgument(f"unknown filesystem {fstype!r}: use ext4, xfs or btrfs") from exc


def _check_room(pool: PoolContext, extra: int) -> None:
    cap = pool.capacity()
    if extra > cap.allocatable:
        raise OutOfCapacity(
            f"pool {pool.name!r} cannot provision {extra} more bytes: {cap.allocatable} "
            f"allocatable (total {cap.total} x overprovision ratio {cap.overprovision_ratio} "
            f"- provisioned {cap.provisioned})")


def _source_info(pool: PoolContext, source: Source) -> tuple[Path, VolumeRecord | None, int, str, str | None,
                                                      bool]:
    """(path, volume record if a volume, size, mode, fs, formatted) of a clone source."""
    try:
        kind = SourceKind(source.kind)
    except ValueError as exc:
        raise InvalidArgument(f"unknown source kind {source.kind!r}") from exc
    if kind is SourceKind.SNAPSHOT:
        validate_name(source.name, what="source snapshot name")
        snap = pool.db.snapshot(source.name)
        if snap is None:
            raise NotFound(f"source snapshot {source.name!r} not found in pool {pool.name!r}")
        return pool.snapshot_path(snap.name), None, snap.size, snap.mode, snap.fs, snap.formatted
    validate_name(source.name, what="source volume name")
    vol = pool.db.volume(source.name)
    if vol is None:
        raise NotFound(f"source volume {source.name!r} not found in pool {pool.name!r}")
    return pool.volume_path(vol.name), vol, vol.size, vol.mode, vol.fs, vol.formatted


def create_volume(pool: PoolContext, name: str, size: int, *, mode: VolumeMode | str,
                  fs: FsType | str | None, source: Source | None,
                  labels: Mapping[str, str] | None) -> VolumeRecord:
    validate_name(name, what="volume name")
    vmode, vfs = _mode_fs(mode, fs)
    size = check_size(size)
    if vfs is not None:
        size = max(size, fs_min(vfs))
    # idempotency first: a retried clone must succeed even if its source is gone by now
    existing = pool.db.volume(name)
    if existing is not None:
        same = (existing.size == size and existing.mode == vmode.value
                and existing.fs == (vfs.value if vfs else None)
                and existing.source_kind == (source.kind if source else None)
                and existing.source_name == (source.name if source else None))
        if same:
            return existing
        raise AlreadyExists(f"volume {name!r} exists in pool {pool.name!r} with another spec")
    src_path: Path | None = None
    src_vol: VolumeRecord | None = None
    src_size = 0
    src_formatted = False
    if source is not None:
        src_path, src_vol, src_size, src_mode, src_fs, src_formatted = _source_info(pool, source)
        if src_mode != vmode.value:
            raise InvalidArgument(f"source {source.name!r} is a {src_mode} volume, not {vmode}")
        if src_formatted and src_fs != (vfs.value if vfs else None):
            raise InvalidArgument(f"source {source.name!r} holds {src_fs}, not {vfs}")
        if size < src_size:
            raise OutOfRange(f"a clone must be at least as large as its source ({src_size} bytes)")

    _check_room(pool, size)

    op = "clone" if source is not None else "create_volume"
    path = pool.volume_path(name)
    mounted: list[str] = []
    if src_path is not None and src_vol is not None:
        for dev in loop.find(src_path):
            mounted += mounts.writable_targets(dev)
    freeze_target = mounted[0] if mounted else None
    # the frozen mount point is part of the intent: recovery must thaw it after a crash
    intent = pool.db.begin_intent(op, name, {"size": size, "frozen": freeze_target})
    rec = VolumeRecord(
        name=name, size=size, mode=vmode.value, fs=vfs.value if vfs else None,
        source_kind=source.kind if source else None, source_name=source.name if source else None,
        # a blank clone's first mkfs clears grow_pending, so it is safe to set it whenever
        # the clone is larger than its source (the flag may lag behind the real content)
        formatted=src_formatted, grow_pending=source is not None and size > src_size,
        labels=dict(labels or {}), created_at=time.time())
    with acting(pool, intent):
        pool.fault(f"{op}.intent")
        if src_path is not None:
            pool.layout.clone(src_path, name, target=freeze_target,
                              frozen=lambda: pool.fault(f"{op}.frozen"))
            if size > src_size:
                _grow_durably(path, size)
        else:
            pool.layout.new_volume(name, size)
        pool.fault(f"{op}.file")
        with pool.db.transaction() as db:
            Metadata.insert_volume(db, rec)
            Metadata.end_intent(db, intent)
    pool.fault(f"{op}.commit")
    log.info("volume created volume=%s/%s size=%d op=%s", pool.name, name, size, op)
    return rec


def _grow_durably(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def fs_min(fstype: FsType) -> int:
    return fs.MIN_SIZE[fstype]


def _mounted_targets(path: Path) -> list[str]:
    targets: list[str] = []
    for dev in loop.find(path):
        targets += mounts.targets_of(dev)
    return targets


def delete_volume(pool: PoolContext, name: str) -> None:
    validate_name(name, what="volume name")
    if pool.db.volume(name) is None:
        raise NotFound(f"volume {name!r} not found in pool {pool.name!r}")
    path = pool.volume_path(name)
    devices = loop.find(path)
    if devices:
        targets = _mounted_targets(path)
        where = f"mounted at {', '.join(targets)}" if targets else f"attached as {devices[0]}"
        raise FailedPrecondition(f"volume {name!r} is {where}; unmount and detach it first")
    remove_recorded(pool, "delete_volume", "volumes", name, pool.layout.volume_entry(name))
    log.info("volume deleted volume=%s/%s", pool.name, name)


def remove_recorded(pool: PoolContext, op: str, table: str, name: str, entry: Path) -> None:
    """Remove a backing file (or subvolume) and drop its row under one intent (volumes and
    snapshots alike): a crash after the removal leaves the intent, and recovery drops the
    row."""
    intent = pool.db.begin_intent(op, name, {})
    with acting(pool, intent):
        pool.fault(f"{op}.intent")
        pool.layout.remove(entry)
        pool.fault(f"{op}.unlinked")
        with pool.db.transaction() as db:
            db.execute(f"DELETE FROM {table} WHERE name=?", (name,))  # table: a constant of ours
            Metadata.end_intent(db, intent)
    pool.fault(f"{op}.commit")


def expand(pool: PoolContext, name: str, new_size: int) -> tuple[VolumeRecord, GrowResult]:
    validate_name(name, what="volume name")
    rec = pool.db.volume(name)
    if rec is None:
        raise NotFound(f"volume {name!r} not found in pool {pool.name!r}")
    new_size = check_size(new_size, what="new size")
    if new_size < rec.size:
        raise OutOfRange(f"volume {name!r} is {rec.size} bytes; shrinking to {new_size} is refused")
    if new_size > rec.size:
        _check_room(pool, new_size - rec.size)
        path = pool.volume_path(name)
        intent = pool.db.begin_intent("expand", name, {"old": rec.size, "new": new_size})
        with acting(pool, intent):
            pool.fault("expand.intent")
            os.truncate(path, new_size)
            pool.fault("expand.truncated")
            for dev in loop.find(path):
                loop.refresh_capacity(dev)
            pool.fault("expand.refreshed")
            with pool.db.transaction() as db:
                db.execute("UPDATE volumes SET size=?, grow_pending=? WHERE name=?",
                           (new_size, int(rec.mode == VolumeMode.FILESYSTEM), name))
                Metadata.end_intent(db, intent)
        pool.fault("expand.commit")
        log.info("volume expanded volume=%s/%s size=%d", pool.name, name, new_size)
    grow = grow_pending_fs(pool, name)
    pool.fault("expand.grown")
    final = pool.db.volume(name)
    assert final is not None
    return final, grow


def grow_pending_fs(pool: PoolContext, name: str) -> GrowResult:
    """Grow the filesystem of ``name`` if it is behind its device; say how."""
    rec = pool.db.volume(name)
    assert rec is not None
    if rec.mode == VolumeMode.BLOCK or rec.fs is None:
        return GrowResult.NOT_FORMATTED
    fstype = FsType(rec.fs)
    if not rec.formatted:
        # first mount will mkfs at full size; a blank file has nothing to grow
        if fs.fs_type(pool.volume_path(name)) is None:
            return GrowResult.NOT_FORMATTED
        pool.db.set_volume_flags(name, formatted=True, grow_pending=True)
        rec = pool.db.volume(name)
        assert rec is not None
    path = pool.volume_path(name)
    devices = loop.find(path)
    targets = _mounted_targets(path)
    if targets:
        if not rec.grow_pending:
            return GrowResult.ONLINE
        if fs.grow_online(fstype, targets[0], devices[0]):
            pool.db.set_volume_flags(name, grow_pending=False)
            return GrowResult.ONLINE
        return GrowResult.AT_NEXT_MOUNT
    if fstype is FsType.EXT4:
        if rec.grow_pending:
            fs.grow_ext4_offline(devices[0] if devices else path)
            pool.db.set_volume_flags(name, grow_pending=False)
        return GrowResult.OFFLINE
    # XFS and btrfs grow only while mounted: done right after the next mount
    return GrowResult.AT_NEXT_MOUNT if rec.grow_pending else GrowResult.OFFLINE


def mount(pool: PoolContext, rec: VolumeRecord, target: Path, options: Sequence[str],
          readonly: bool) -> None:
    if rec.mode == VolumeMode.BLOCK or rec.fs is None:
        raise FailedPrecondition(f"volume {rec.name!r} is a block volume: use attach, not mount")
    fstype = FsType(rec.fs)
    path = pool.volume_path(rec.name)
    was_attached = bool(loop.find(path))
    device = loop.attach(path)
    try:
        _mount_device(pool, rec, fstype, device, target, options, readonly)
    except BaseException:
        # leave the volume as we found it: a failed first mount must not pin a loop device
        if not was_attached and not mounts.targets_of(device):
            loop.detach(device)
        raise


def _mount_device(pool: PoolContext, rec: VolumeRecord, fstype: FsType, device: str, target: Path,
                  options: Sequence[str], readonly: bool) -> None:
    current = mounts.mount_at(target)
    if current is not None:
        if current.source == device:
            return
        raise FailedPrecondition(f"{target} already has {current.source} mounted")
    found = fs.fs_type(device)
    if found is None and rec.formatted:
        # never format over data we formatted before: something else wiped the signature
        raise FailedPrecondition(
            f"volume {rec.name!r} was formatted with {fstype} but no filesystem is found on it")
    if found is None:
        fs.mkfs(device, fstype)
        pool.db.set_volume_flags(rec.name, formatted=True, grow_pending=False)
        log.info("volume formatted volume=%s/%s fs=%s", pool.name, rec.name, fstype)
    elif found != fstype.value:
        raise FailedPrecondition(f"volume {rec.name!r} holds {found}, expected {fstype}")
    else:
        pool.db.set_volume_flags(rec.name, formatted=True)
    fresh = pool.db.volume(rec.name)
    assert fresh is not None
    others = mounts.targets_of(device)
    if fresh.grow_pending and fstype is FsType.EXT4 and not others and not readonly:
        fs.grow_ext4_offline(device)
        pool.db.set_volume_flags(rec.name, grow_pending=False)
    target.mkdir(parents=True, exist_ok=True)
    fs.mount(device, target, fstype.value, fs.mount_options(fstype.value, options, readonly))
    if fresh.grow_pending and fstype is not FsType.EXT4 and not readonly:
        fs.grow_online(fstype, str(target), device)
        pool.db.set_volume_flags(rec.name, grow_pending=False)
