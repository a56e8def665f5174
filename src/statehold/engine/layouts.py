"""Where a pool keeps its volumes and snapshots, and how it copies them: one class per layout.

A pool's layout is fixed when the pool is made (``pools.layout``, docs/design/snapshots.md):

``file`` (every pool made before layouts existed, and the default)::

    volumes/<name>.img      the volume's sparse backing file
    snapshots/<name>.img    a read-only (0444) reflink of it

``subvolume`` (btrfs pools only; schema version 2)::

    volumes/<name>/             a btrfs subvolume per volume
    volumes/<name>/volume.img   its backing file: the only file in it (and, while a
                                replica is being received, the work file ``.work``)
    snapshots/<name>/           a read-only snapshot of ``volumes/<volume>/``
    snapshots/<name>/volume.img

A reflink costs time per extent of the file: seconds for a volume that lived under random
writes with snapshots kept. A subvolume snapshot does not look at the file's extents, so
its cost does not grow with the volume's history; the price is btrfs's slower 4 KiB random
writes, which is why the layout is opt-in.

:mod:`lifecycle`, :mod:`snapshotting`, :mod:`groups` and :mod:`recovery` keep the intent
journal and the records; they ask the pool's layout for paths and for the file work, so
neither knows which layout it works on. An *entry* is what an operation creates and
removes as a whole: the backing file (``file``) or the subvolume (``subvolume``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from statehold.engine import catchup, nocow, subvolume
from statehold.engine import freeze as freezing
from statehold.engine.ficlone import reflink
from statehold.engine.files import fsync_dir
from statehold.engine.freezekeeper import FreezeKeeper, Window
from statehold.engine.metadata import LAYOUT_FILE, LAYOUT_SUBVOLUME
from statehold.errors import FailedPrecondition, InvalidArgument, Temporary

VOLUMES_DIR = "volumes"
SNAPSHOTS_DIR = "snapshots"
READ_ONLY = 0o444
WORKING = 0o600
"""Mode of a snapshot file while it is being made (0444 once sealed, file layout)."""
BACKING_FILE = "volume.img"
"""The backing file's name inside its subvolume (subvolume layout)."""
LAYOUTS = (LAYOUT_FILE, LAYOUT_SUBVOLUME)
CLEANER_WAIT = 30.0
"""Longest a subvolume pool's snapshot or clone waits for btrfs's cleaner to finish dropping
deleted subvolumes before it flushes and freezes (subvolume.wait_cleaned)."""


def _nothing() -> None:
    pass


def check(layout: str, fstype: str) -> str:
    """A pool layout a pool on ``fstype`` can have (InvalidArgument otherwise)."""
    if layout not in LAYOUTS:
        raise InvalidArgument(f"unknown pool layout {layout!r}: use {' or '.join(LAYOUTS)}")
    if layout == LAYOUT_SUBVOLUME and fstype != "btrfs":
        raise InvalidArgument(
            f"pool layout subvolume needs a btrfs pool (disks or images, which it formats "
            f"btrfs, or a directory on btrfs); this pool would be {fstype}")
    return layout


class Layout(abc.ABC):
    """The files of one pool: paths, and the file work of each operation."""

    name: str

    def __init__(self, root: Path) -> None:
        self.root = root
        self.volumes_dir = root / VOLUMES_DIR
        self.snapshots_dir = root / SNAPSHOTS_DIR

    # -- paths ---------------------------------------------------------------------------
    @abc.abstractmethod
    def volume_path(self, name: str) -> Path:
        """The volume's backing file (what loop devices attach)."""

    @abc.abstractmethod
    def snapshot_path(self, name: str) -> Path:
        """The snapshot's file."""

    @abc.abstractmethod
    def volume_entry(self, name: str) -> Path:
        """What creating the volume makes and deleting it removes."""

    @abc.abstractmethod
    def snapshot_entry(self, name: str) -> Path:
        """What taking the snapshot makes and deleting it removes."""

    def work_dir(self, name: str) -> Path | None:
        """Where a file that will be renamed over the volume's backing file must be made;
        None when any directory of the pool will do."""
        return None

    # -- operations ----------------------------------------------------------------------
    @abc.abstractmethod
    def new_volume(self, name: str, size: int) -> None:
        """Make the empty (sparse) volume ``name``; durable on return."""

    @abc.abstractmethod
    def snapshot(self, volume: str, name: str, *, target: str | None,
                 flush: Callable[[], None], timeout: float, keeper: catchup.Keeper,
                 frozen: Callable[[], None], cloned: Callable[[], None]) -> Window | None:
        """Copy ``volume`` to snapshot ``name``, read-only and durable. ``target``: the
        mounted filesystem to freeze (the keeper thaws after ``timeout`` or if we die;
        Temporary then); otherwise ``flush`` runs first (crash-consistent copy). Returns
        the freeze window, if any."""

    @abc.abstractmethod
    def clone(self, source: Path, name: str, *, target: str | None,
              frozen: Callable[[], None]) -> None:
        """Make volume ``name`` a copy of a volume or snapshot (``source`` is its path);
        ``target``: the source volume's mounted filesystem, frozen for the copy."""

    @abc.abstractmethod
    def remove(self, entry: Path) -> None:
        """Remove a volume's or a snapshot's entry (idempotent), durably."""

    # -- group snapshots (the caller freezes) ------------------------------------------------
    @abc.abstractmethod
    def precopy(self, volume: str, snapshot: str) -> catchup.Prepared | None:
        """Outside the freeze window: whatever part of the copy costs time per extent."""

    @abc.abstractmethod
    def before_window(self) -> None:
        """Outside the window, after the members' flush: work that would otherwise land
        inside it."""

    @abc.abstractmethod
    def window_copy(self, volume: str, snapshot: str, before: catchup.Prepared | None) -> None:
        """Inside the window (or for a member nobody writes): finish the copy."""

    @abc.abstractmethod
    def seal(self, snapshot: str) -> None:
        """After the window: the snapshot durable and read-only."""

    # -- recovery ----------------------------------------------------------------------------
    @abc.abstractmethod
    def entries(self, directory: Path) -> Iterator[tuple[Path, str | None]]:
        """Every entry of ``volumes/`` or ``snapshots/``, with the name it would carry
        (None: not of the shape this layout makes, so not a volume or snapshot at all)."""

    @abc.abstractmethod
    def to_orphans(self, entry: Path, orphans: Path) -> Path:
        """Move an unrecorded entry into ``orphans`` (never deleted); where it went."""

    @abc.abstractmethod
    def reseal(self, snapshot: str) -> bool:
        """Make the snapshot read-only again if something changed that; True if it did."""


def _new_sparse_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, WORKING)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(orphans: Path, name: str) -> Path:
    dest = orphans / name
    n = 1
    while os.path.lexists(dest):
        n += 1
        dest = orphans / f"{name}.{n}"
    return dest


class FileLayout(Layout):
    """A sparse file per volume; snapshots and clones are reflinks (O(extents))."""

    name = LAYOUT_FILE

    def volume_path(self, name: str) -> Path:
        return self.volumes_dir / f"{name}.img"

    def snapshot_path(self, name: str) -> Path:
        return self.snapshots_dir / f"{name}.img"

    volume_entry = volume_path
    snapshot_entry = snapshot_path

    def new_volume(self, name: str, size: int) -> None:
        # no row names it, so a leftover of a crashed attempt is overwritten (O_TRUNC)
        _new_sparse_file(self.volume_path(name), size)
        fsync_dir(self.volumes_dir)

    def snapshot(self, volume: str, name: str, *, target: str | None,
                 flush: Callable[[], None], timeout: float, keeper: catchup.Keeper,
                 frozen: Callable[[], None], cloned: Callable[[], None]) -> Window | None:
        src, dst = self.volume_path(volume), self.snapshot_path(name)
        window = None
        if target is None:
            # one FICLONE: the only atomic copy of a file that is still being written
            flush()
            frozen()
            reflink(src, dst, mode=READ_ONLY)
            cloned()
        else:  # early copy while it runs, frozen (by a keeper) only for the catch-up
            window = catchup.copy_frozen(src, dst, target, timeout=timeout, keeper=keeper,
                                         frozen=frozen, cloned=cloned)
        os.chmod(dst, READ_ONLY)
        fsync_dir(self.snapshots_dir)
        return window

    def clone(self, source: Path, name: str, *, target: str | None,
              frozen: Callable[[], None]) -> None:
        path = self.volume_path(name)
        if target is None:
            frozen()
            reflink(source, path)
        else:  # a mounted source volume: frozen only for the catch-up, by a keeper
            catchup.copy_frozen(source, path, target, frozen=frozen)
        fsync_dir(self.volumes_dir)

    def remove(self, entry: Path) -> None:
        entry.unlink(missing_ok=True)
        fsync_dir(entry.parent)

    def precopy(self, volume: str, snapshot: str) -> catchup.Prepared | None:
        return catchup.preclone(self.volume_path(volume), self.snapshot_path(snapshot),
                                mode=WORKING)

    def before_window(self) -> None:
        pass  # the early copy (precopy) did the slow part already

    def window_copy(self, volume: str, snapshot: str, before: catchup.Prepared | None) -> None:
        src, dst = self.volume_path(volume), self.snapshot_path(snapshot)
        if before is not None:
            catchup.catch_up(src, dst, before, mode=WORKING)
        else:  # one whole FICLONE is the only atomic copy of a live block volume
            reflink(src, dst, mode=WORKING)

    def seal(self, snapshot: str) -> None:
        path = self.snapshot_path(snapshot)
        _fsync(path)
        os.chmod(path, READ_ONLY)

    def entries(self, directory: Path) -> Iterator[tuple[Path, str | None]]:
        for entry in sorted(directory.iterdir()):
            is_ours = entry.name.endswith(".img") and not entry.is_dir()
            yield entry, entry.name.removesuffix(".img") if is_ours else None

    def to_orphans(self, entry: Path, orphans: Path) -> Path:
        dest = orphans / f"{entry.parent.name}-{entry.name}"
        os.replace(entry, dest)
        return dest

    def reseal(self, snapshot: str) -> bool:
        path = self.snapshot_path(snapshot)
        if path.exists() and path.stat().st_mode & 0o222:
            os.chmod(path, READ_ONLY)
            return True
        return False


class SubvolumeLayout(Layout):
    """A btrfs subvolume per volume; snapshots and clones are subvolume snapshots (O(1))."""

    name = LAYOUT_SUBVOLUME

    def volume_entry(self, name: str) -> Path:
        return self.volumes_dir / name

    def snapshot_entry(self, name: str) -> Path:
        return self.snapshots_dir / name

    def volume_path(self, name: str) -> Path:
        return self.volume_entry(name) / BACKING_FILE

    def snapshot_path(self, name: str) -> Path:
        return self.snapshot_entry(name) / BACKING_FILE

    def work_dir(self, name: str) -> Path | None:
        # rename(2) across subvolumes fails (EXDEV): a replacement is made beside the file
        return self.volume_entry(name)

    def new_volume(self, name: str, size: int) -> None:
        entry = self.volume_entry(name)
        subvolume.destroy(entry, commit=False)  # a crashed attempt's leftover: no row names it
        subvolume.create(entry)
        if not nocow.data_redundant(self.root):  # written in place (nocow.py explains)
            nocow.set_flag(entry)
        _new_sparse_file(entry / BACKING_FILE, size)
        self._commit()

    def _commit(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            subvolume.commit_fd(fd, self.root)
        finally:
            os.close(fd)

    def _snap(self, src: Path, dst: Path, *, readonly: bool) -> None:
        subvolume.destroy(dst, commit=False)  # a crashed attempt's leftover: no row names it
        subvolume.snapshot(src, dst, readonly=readonly)

    def snapshot(self, volume: str, name: str, *, target: str | None,
                 flush: Callable[[], None], timeout: float, keeper: catchup.Keeper,
                 frozen: Callable[[], None], cloned: Callable[[], None]) -> Window | None:
        src, dst = self.volume_entry(volume), self.snapshot_entry(name)
        subvolume.wait_cleaned(self.root, CLEANER_WAIT)
        if target is None:
            flush()
            frozen()
            self._snap(src, dst, readonly=True)
            cloned()
            return None
        return self._frozen_snap(src, dst, target, readonly=True, timeout=timeout,
                                 keeper=keeper, frozen=frozen, cloned=cloned)

    def _frozen_snap(self, src: Path, dst: Path, target: str, *, readonly: bool,
                     timeout: float = catchup.FREEZE_TIMEOUT,
                     keeper: catchup.Keeper = FreezeKeeper,
                     frozen: Callable[[], None] = _nothing,
                     cloned: Callable[[], None] = _nothing) -> Window:
        """Flush outside the window (the volume's filesystem, then the pool's transaction),
        then freeze for the snapshot ioctl alone."""
        subvolume.destroy(dst, commit=False)
        with keeper(timeout, wait_ready=False) as holder:  # its start-up overlaps the flush
            freezing.syncfs(target)
            subvolume.sync(self.root)
            holder.freeze([target])
            frozen()
            subvolume.snapshot(src, dst, readonly=readonly)
            cloned()
            window: Window = holder.thaw()
        if window.expired:
            raise Temporary(f"{target} stayed frozen longer than {timeout:g} s, so the watchdog "
                            "thawed it before the snapshot was taken; nothing was kept",
                            retry_after=1.0)
        return window

    def clone(self, source: Path, name: str, *, target: str | None,
              frozen: Callable[[], None]) -> None:
        src = source.parent  # the source's subvolume
        dst = self.volume_entry(name)
        subvolume.wait_cleaned(self.root, CLEANER_WAIT)
        if target is None:
            frozen()
            self._snap(src, dst, readonly=False)
        else:
            self._frozen_snap(src, dst, target, readonly=False, frozen=frozen)
        # a replica's unfinished work file came along: it is no part of the clone
        work = dst / ".work"
        if work.exists():
            work.unlink()
        os.chmod(dst / BACKING_FILE, WORKING)
        self._commit()

    def remove(self, entry: Path) -> None:
        if subvolume.destroy(entry):
            return
        if os.path.lexists(entry):
            raise FailedPrecondition(f"{entry} is not a btrfs subvolume: left in place")

    def precopy(self, volume: str, snapshot: str) -> catchup.Prepared | None:
        return None  # nothing here costs time per extent

    def before_window(self) -> None:
        subvolume.wait_cleaned(self.root, CLEANER_WAIT)
        subvolume.sync(self.root)

    def window_copy(self, volume: str, snapshot: str, before: catchup.Prepared | None) -> None:
        self._snap(self.volume_entry(volume), self.snapshot_entry(snapshot), readonly=True)

    def seal(self, snapshot: str) -> None:
        pass  # read-only and committed by the snapshot ioctl itself

    def entries(self, directory: Path) -> Iterator[tuple[Path, str | None]]:
        for entry in sorted(directory.iterdir()):
            yield entry, entry.name if subvolume.is_subvolume(entry) else None

    def to_orphans(self, entry: Path, orphans: Path) -> Path:
        dest = _free_name(orphans, f"{entry.parent.name}-{entry.name}")
        if not subvolume.is_subvolume(entry):
            os.rename(entry, dest)
            return dest
        # a read-only subvolume cannot be renamed (its ".." would change): unset, move, set
        was_readonly = subvolume.readonly(entry)
        if was_readonly:
            subvolume.set_readonly(entry, False)
        try:
            os.rename(entry, dest)
        finally:
            if was_readonly:
                subvolume.set_readonly(dest if os.path.lexists(dest) else entry, True)
        self._commit()
        return dest

    def reseal(self, snapshot: str) -> bool:
        entry = self.snapshot_entry(snapshot)
        if subvolume.is_subvolume(entry) and not subvolume.readonly(entry):
            subvolume.set_readonly(entry, True)
            return True
        return False


def of(root: Path, layout: str) -> Layout:
    """The layout object of a pool whose files live under ``root``."""
    if layout == LAYOUT_SUBVOLUME:
        return SubvolumeLayout(root)
    if layout == LAYOUT_FILE:
        return FileLayout(root)
    raise InvalidArgument(f"unknown pool layout {layout!r}")
