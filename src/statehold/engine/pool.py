"""One pool: a reflink-capable filesystem holding volumes, snapshots and its own metadata.

Layout inside the pool mount (see docs/design/pool-metadata.md)::

    .statehold/meta.db     SQLite (WAL): pool, volumes, snapshots, intents
    volumes/<name>.img     sparse backing file of each volume
    snapshots/<name>.img   read-only reflink of a volume at one instant

or, for a pool of layout ``subvolume`` (btrfs, opt-in: :mod:`layouts`),
``volumes/<name>/volume.img`` and ``snapshots/<name>/volume.img``, each directory a btrfs
subvolume.

The database says what exists; the kernel says what is attached and mounted (loop devices
are found by exact backing-file path, mounts by device in /proc/self/mountinfo), so a
crash can never leave the two disagreeing about attachment. Every public method holds the
pool's lock: calls from several threads (a CSI server) are serialised per pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from statehold.engine import capacity as fullness
from statehold.engine import fs, layouts, lifecycle, loop, mounts, recovery, snapshotting
from statehold.engine import trim as trimming
from statehold.engine.exclusive import SpaceUse, space_use
from statehold.engine.files import flock_within
from statehold.engine.metadata import Metadata, SnapshotRecord, VolumeRecord
from statehold.engine.steps import FaultHook, no_fault
from statehold.engine.types import (
    Capacity,
    ExpandResult,
    FsType,
    Snapshot,
    Source,
    SourceKind,
    Volume,
    VolumeMode,
)
from statehold.errors import Aborted, FailedPrecondition, NotFound, Unavailable

log = logging.getLogger("statehold.engine.pool")

META_DIR = ".statehold"
META_DB = "meta.db"
"""The pool database, in ``META_DIR``."""
VOLUMES_DIR = layouts.VOLUMES_DIR
SNAPSHOTS_DIR = layouts.SNAPSHOTS_DIR
LOCK_FILE = "lock"

P = ParamSpec("P")
R = TypeVar("R")


LOCK_TIMEOUT = 300.0
"""Seconds to wait for another process's operation on the pool before giving up (Aborted)."""


def _flock(fd: int, name: str) -> None:
    if not flock_within(fd, LOCK_TIMEOUT, poll=0.05):
        raise Aborted(f"pool {name!r} is busy with another process's operation")


def _locked(method: Callable[P, R]) -> Callable[P, R]:
    """Serialise on the pool: a thread lock, plus ``flock`` on ``.statehold/lock``.

    The flock keeps other processes on this host (a CLI beside the agent) out while an
    operation runs, so their start-up recovery never mistakes a live intent for a crashed
    one. The kernel drops it when a process dies, so a crash never leaves the pool locked.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        assert isinstance(self, Pool)
        with self.exclusive():
            return method(*args, **kwargs)

    return wrapper


class Pool:
    """A mounted pool. Obtain one from :class:`statehold.engine.node.Node`."""

    def __init__(
        self,
        name: str,
        mountpoint: Path,
        db: Metadata,
        *,
        fault_hook: FaultHook | None = None,
        devices: Sequence[str] = (),
        sources: Sequence[str] = (),
        directory: bool = False,
    ) -> None:
        self.name = name
        self.mountpoint = mountpoint
        self.db = db
        self.fault = fault_hook or no_fault
        self.devices = tuple(devices)
        """Block devices the pool filesystem sits on (loop devices for images)."""
        self.sources = tuple(sources)
        """What the pool was made from: device paths or image files."""
        self.is_directory = directory
        """True for a pool made in an existing directory (no disks, nothing to mount)."""
        self._lock = threading.RLock()
        self._depth = 0
        self._released: str | None = None
        """Why this process let go of the pool (``release``); None while it is open."""
        self._lock_fd: int | None = os.open(
            self.meta_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        record = db.pool()
        self.uuid = record.uuid
        self.fs = record.fs
        self.profile = record.profile
        self.layout: layouts.Layout = layouts.of(mountpoint, record.layout)
        """Where volumes and snapshots live and how they are copied (fixed at creation)."""

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the pool (the lock every public method takes) across several calls: an
        operation spanning pools, such as a group snapshot, takes each pool's in name order."""
        with self._lock:
            if self._lock_fd is None:  # released or closed: its handles are gone
                if self._released is not None:
                    raise FailedPrecondition(self._released)
                raise Unavailable(f"pool {self.name!r} is closed in this process")
            outer = self._depth == 0
            if outer:
                _flock(self._lock_fd, self.name)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if outer and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @property
    def image_files(self) -> list[str]:
        """Sources that are image files (each loop-attached as one of ``devices``)."""
        if self.is_directory:
            return []
        return [s for s, d in zip(self.sources, self.devices, strict=True) if s != d]

    # -- paths -----------------------------------------------------------------------------
    @property
    def meta_dir(self) -> Path:
        return self.mountpoint / META_DIR

    @property
    def volumes_dir(self) -> Path:
        return self.mountpoint / VOLUMES_DIR

    @property
    def snapshots_dir(self) -> Path:
        return self.mountpoint / SNAPSHOTS_DIR

    def volume_path(self, name: str) -> Path:
        """The volume's backing file (``volumes/<name>.img``, or ``volumes/<name>/volume.img``
        in a subvolume pool)."""
        return self.layout.volume_path(name)

    def snapshot_path(self, name: str) -> Path:
        return self.layout.snapshot_path(name)

    def work_dir(self, name: str) -> Path | None:
        """Where a file that will be renamed over the volume's backing file must be made
        (inside its subvolume); None when any directory of the pool will do."""
        return self.layout.work_dir(name)

    # -- conversions -----------------------------------------------------------------------
    def _to_volume(self, rec: VolumeRecord) -> Volume:
        path = self.volume_path(rec.name)
        devices = loop.find(path)
        device = devices[0] if devices else None
        targets: list[str] = []
        for dev in devices:
            targets += mounts.targets_of(dev)
        source = (
            Source(SourceKind(rec.source_kind), rec.source_name)
            if rec.source_kind and rec.source_name
            else None
        )
        return Volume(
            pool=self.name,
            name=rec.name,
            size=rec.size,
            mode=VolumeMode(rec.mode),
            fs=FsType(rec.fs) if rec.fs else None,
            path=path,
            created_at=rec.created_at,
            source=source,
            device=device,
            mounts=tuple(targets),
            formatted=rec.formatted,
            labels=dict(rec.labels),
        )

    def _to_snapshot(self, rec: SnapshotRecord) -> Snapshot:
        return Snapshot(
            pool=self.name,
            name=rec.name,
            source_volume=rec.source_volume,
            size=rec.size,
            path=self.snapshot_path(rec.name),
            created_at=rec.created_at,
            frozen=rec.frozen,
            mode=VolumeMode(rec.mode),
            fs=FsType(rec.fs) if rec.fs else None,
        )

    def _record(self, name: str) -> VolumeRecord:
        rec = self.db.volume(name)
        if rec is None:
            raise NotFound(f"volume {name!r} not found in pool {self.name!r}")
        return rec

    # -- capacity --------------------------------------------------------------------------
    @_locked
    def capacity(self) -> Capacity:
        """Physical (statvfs of the pool fs) and thin (sum of volume sizes) accounting.

        ``allocatable`` = total x overprovision ratio - provisioned (0 when the pool is
        physically full): what ``create_volume`` and ``expand`` may still add.
        """
        try:
            st = os.statvfs(self.mountpoint)
        except OSError as exc:
            raise Unavailable(f"pool {self.name!r} at {self.mountpoint}: {exc}") from exc
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        provisioned = self.db.provisioned()
        ratio = self.db.pool().overprovision_ratio
        allocatable = max(0, int(total * ratio) - provisioned) if free > 0 else 0
        return Capacity(total=total, used=used, provisioned=provisioned, free=free,
                        overprovision_ratio=ratio, allocatable=allocatable)

    @_locked
    def set_overprovision_ratio(self, ratio: float) -> None:
        """Change the ratio (>= 1.0; InvalidArgument otherwise); existing volumes stay."""
        lifecycle.check_ratio(ratio)
        self.db.set_overprovision_ratio(ratio)

    @_locked
    def thresholds(self) -> fullness.Thresholds:
        """The pool's warning and critical marks (% of capacity used; see engine/capacity)."""
        with self.db.transaction() as db:
            return fullness.read_thresholds(db)

    @_locked
    def set_thresholds(self, warning: float, critical: float) -> fullness.Thresholds:
        """Change the marks (``0 < warning <= critical <= 100``, InvalidArgument otherwise);
        recorded in the pool, so they move with it."""
        marks = fullness.check_thresholds(warning, critical)
        with self.db.transaction() as db:
            fullness.write_thresholds(db, marks)
        return marks

    @_locked
    def space(self) -> fullness.Space:
        """Usage against the marks now: ok, warning, critical or full."""
        return fullness.space_of(self.name, self.capacity(), self.thresholds())

    # -- volumes ---------------------------------------------------------------------------
    @_locked
    def create_volume(
        self,
        name: str,
        size: int,
        *,
        mode: VolumeMode = VolumeMode.FILESYSTEM,
        fs: FsType | None = FsType.XFS,
        source: Source | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Volume:
        """Create a thin volume (sparse file), or a clone of ``source`` (FICLONE, O(1)).

        ``size`` is rounded up to 1 MiB and, for filesystem volumes, to the filesystem's
        minimum (xfs 300 MiB, btrfs 128 MiB, ext4 16 MiB); ``Volume.size`` is the result.
        Same name and spec returns the existing volume; another spec is AlreadyExists.
        Bad name/size/mode/fs: InvalidArgument; no room: OutOfCapacity; a clone smaller
        than its source: OutOfRange; missing source: NotFound. Nothing is formatted here:
        the first ``mount`` does it.
        """
        if self.db.volume(name) is None:  # a retry of a volume that exists is still answered
            fullness.refuse_new(self.space(), f"{'clone' if source else 'volume'} {name!r}")
        rec = lifecycle.create_volume(self, name, size, mode=mode, fs=fs, source=source,
                                      labels=labels)
        return self._to_volume(rec)

    @_locked
    def get_volume(self, name: str) -> Volume:
        return self._to_volume(self._record(name))

    @_locked
    def list_volumes(self) -> list[Volume]:
        return [self._to_volume(r) for r in self.db.volumes()]

    @_locked
    def delete_volume(self, name: str) -> None:
        """Delete a volume (NotFound; FailedPrecondition while attached or mounted).

        Its snapshots are independent files and stay.
        """
        lifecycle.delete_volume(self, name)
        with self.db.transaction() as db:
            trimming.drop_record(db, name)

    @_locked
    def expand(self, name: str, new_size: int) -> ExpandResult:
        """Grow a volume: truncate, ``losetup -c``, grow the filesystem; ``grow`` says how.

        Online for mounted xfs and btrfs; a mounted ext4 is refused by this kernel, so it is
        grown before its next mount (AT_NEXT_MOUNT); an unmounted ext4 is grown now
        (OFFLINE); unmounted xfs/btrfs grow right after their next mount. Smaller:
        OutOfRange; beyond ``allocatable``: OutOfCapacity; same size: no-op.
        """
        rec, grow = lifecycle.expand(self, name, new_size)
        return ExpandResult(volume=self._to_volume(rec), grow=grow)

    @_locked
    def is_formatted(self, name: str) -> bool:
        """True once the volume holds a filesystem (checked with blkid when not recorded)."""
        rec = self._record(name)
        if rec.formatted:
            return True
        found = fs.fs_type(self.volume_path(name)) is not None
        if found:
            self.db.set_volume_flags(name, formatted=True)
        return found

    # -- attachment ------------------------------------------------------------------------
    @_locked
    def attach(self, name: str) -> str:
        """Attach as a loop device (direct I/O, 4096-byte blocks); idempotent: same device."""
        self._record(name)
        return loop.attach(self.volume_path(name))

    @_locked
    def detach(self, name: str) -> None:
        """Detach every loop device of the volume; idempotent; FailedPrecondition if mounted."""
        self._record(name)
        for dev in loop.find(self.volume_path(name)):
            targets = mounts.targets_of(dev)
            if targets:
                raise FailedPrecondition(
                    f"volume {name!r} is mounted at {', '.join(targets)}; unmount it first")
            loop.detach(dev)

    @_locked
    def mount(self, name: str, target: Path, *, options: Sequence[str] = (),
              readonly: bool = False) -> Volume:
        """Attach, mkfs if blank (never over an existing signature), grow if pending, mount.

        Idempotent for the same target; FailedPrecondition for block volumes or a target
        holding something else. XFS is always mounted ``nouuid`` (clones share the UUID).
        """
        rec = self._record(name)
        lifecycle.mount(self, rec, Path(os.path.abspath(target)), options, readonly)
        return self._to_volume(self._record(name))

    @_locked
    def unmount(self, name: str, target: Path) -> Volume:
        """Unmount ``target`` (idempotent); the device stays attached (``detach`` frees it)."""
        rec = self._record(name)
        wanted = os.path.abspath(target)
        current = mounts.mount_at(wanted)
        if current is not None:
            ours = loop.find(self.volume_path(name))
            if current.source not in ours:
                raise FailedPrecondition(
                    f"{wanted} holds {current.source}, not volume {name!r}")
            fs.umount(wanted)
        return self._to_volume(rec)

    # -- snapshots -------------------------------------------------------------------------
    @_locked
    def create_snapshot(self, volume: str, name: str, *, freeze: bool = True) -> Snapshot:
        """Reflink the volume's file to ``snapshots/<name>.img`` (0444), or, in a subvolume
        pool, snapshot its subvolume read-only to ``snapshots/<name>/``.

        Mounted read-write and ``freeze``: FIFREEZE around the copy's last step; otherwise
        syncfs (or a buffer flush for an attached block volume). Idempotent for the same volume; the
        name used for another volume's snapshot is AlreadyExists.
        """
        if self.db.snapshot(name) is None:  # a retry of a snapshot that exists is still answered
            fullness.refuse_new(self.space(), f"snapshot {name!r}")
        return self._to_snapshot(snapshotting.create(self, volume, name, freeze=freeze))

    @_locked
    def get_snapshot(self, name: str) -> Snapshot:
        rec = self.db.snapshot(name)
        if rec is None:
            raise NotFound(f"snapshot {name!r} not found in pool {self.name!r}")
        return self._to_snapshot(rec)

    @_locked
    def list_snapshots(self, volume: str | None = None) -> list[Snapshot]:
        return [self._to_snapshot(r) for r in self.db.snapshots(volume)]

    @_locked
    def delete_snapshot(self, name: str) -> None:
        snapshotting.delete(self, name)

    # -- space -----------------------------------------------------------------------------
    @_locked
    def snapshot_space(self, name: str) -> SpaceUse:
        """Bytes the snapshot holds alone (what deleting it frees) and shares (engine/exclusive)."""
        if self.db.snapshot(name) is None:
            raise NotFound(f"snapshot {name!r} not found in pool {self.name!r}")
        return space_use(self.snapshot_path(name))

    @_locked
    def volume_space(self, name: str) -> SpaceUse:
        """Bytes the volume's backing file holds alone and shares with snapshots and clones."""
        self._record(name)
        return space_use(self.volume_path(name))

    def trim(self, name: str, *, at: float | None = None) -> trimming.TrimResult:
        """Discard the free space of a mounted filesystem volume (``FITRIM``): its loop
        device punches the holes in the backing file and the pool gets the blocks back,
        except those a snapshot still shares. Returns what the pool got back.

        FailedPrecondition for a block volume (whatever is on it discards by itself), a
        volume not mounted read-write, or a device without discard. The pool lock is held
        only to find the mount: the trim itself runs on an open descriptor of it (which
        also keeps it mounted) so that other operations on the pool are not held up.
        ``at`` is the instant recorded as the trim's (a scheduled pass records its own, so
        the next slot is counted from it); default: when the trim finished.
        """
        with self.exclusive():
            rec = self._record(name)
            if rec.mode == VolumeMode.BLOCK or rec.fs is None:
                raise FailedPrecondition(
                    f"volume {name!r} is a block volume: the filesystem or application on it "
                    "discards for itself (the loop device passes discards through)")
            path = self.volume_path(name)
            devices = loop.find(path)
            found = [m for m in mounts.mounts() if m.source in devices and not m.readonly]
            if not found:
                raise FailedPrecondition(
                    f"volume {name!r} is not mounted read-write: only its mounted filesystem "
                    "knows which blocks are free")
            entry = found[0]
            if loop.discard_max_bytes(entry.source) == 0:
                raise FailedPrecondition(
                    f"{entry.source} takes no discards: the pool filesystem cannot punch holes")
            created_at = rec.created_at
        with trimming.open_mount(entry.target, entry.mount_id) as fd:
            result = trimming.trim_fd(fd, f"{self.name}/{name}", entry.target, path, entry.source)
        with self.exclusive():
            current = self.db.volume(name)
            if current is not None and current.created_at == created_at:
                with self.db.transaction() as db:
                    trimming.write_record(db, name, trimming.TrimRecord(
                        created_at, result.at if at is None else at, result.released))
        return result

    @_locked
    def trim_records(self) -> dict[str, trimming.TrimRecord]:
        """The last recorded trim of every volume trimmed since it was created, by name."""
        created = {r.name: r.created_at for r in self.db.volumes()}
        with self.db.transaction() as db:
            return trimming.read_records(db, created)

    @_locked
    def last_trim(self, name: str) -> trimming.TrimRecord | None:
        """The volume's last recorded trim (None: never trimmed since it was created)."""
        rec = self._record(name)
        with self.db.transaction() as db:
            return trimming.read_record(db, name, rec.created_at)

    # -- lifecycle -------------------------------------------------------------------------
    def settle(self, intent_id: int) -> list[str]:
        """Finish or roll back one intent of an operation that failed midway (not crashed)."""
        return recovery.settle(self, intent_id)

    @_locked
    def reconcile(self) -> list[str]:
        """Crash recovery (see ``recovery``): one line per action taken."""
        return recovery.reconcile(self)

    def close(self) -> None:
        """Close the database and the lock file (after the operation in flight, if any);
        the pool stays mounted. Later calls raise Unavailable."""
        with self._lock:
            self.db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def release(self, reason: str) -> None:
        """Let go of every handle this process holds in the pool, as ``close``, because
        another process exports it (Node's release protocol); later calls raise
        FailedPrecondition(``reason``) instead of touching a pool that is going away."""
        with self._lock:
            self._released = reason
            self.close()

    @property
    def released(self) -> str | None:
        """Why this process let go of the pool, or None."""
        return self._released

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (CLI ``describe``)."""
        now = self.space()
        cap = now.capacity
        return {
            "name": self.name,
            "uuid": self.uuid,
            "fs": self.fs,
            "profile": self.profile,
            "layout": self.layout.name,
            "mountpoint": str(self.mountpoint),
            "sources": list(self.sources),
            "directory": self.is_directory,
            "devices": list(self.devices),
            "capacity": {
                "total": cap.total, "used": cap.used, "provisioned": cap.provisioned,
                "free": cap.free, "overprovision_ratio": cap.overprovision_ratio,
                "allocatable": cap.allocatable,
            },
            "space": {
                "level": now.level.value, "used_percent": round(now.used_percent, 2),
                "warning": now.thresholds.warning, "critical": now.thresholds.critical,
            },
        }
