"""The disks under a pool: checking, image files, mkfs, mount and unmount of the pool fs.

One device (or image) becomes XFS with ``reflink=1``; several become one btrfs filesystem
with the chosen data profile. A pool of layout ``subvolume`` is btrfs on one device too
(metadata ``dup``: two copies on the one disk). A device that already carries a filesystem
or a partition table is refused unless the caller forces it (then its signatures are
wiped), and a device that the kernel reports busy (mounted, held by another driver) is
always refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from statehold.engine import fs, loop, mounts
from statehold.engine.types import PoolLayout, RaidProfile
from statehold.errors import CommandError, FailedPrecondition, InvalidArgument, NotFound
from statehold.runner import run

XFS = "xfs"
BTRFS = "btrfs"

# metadata is at least mirrored whenever two devices make that possible
METADATA_PROFILE: dict[RaidProfile, str] = {
    RaidProfile.SINGLE: "raid1",
    RaidProfile.RAID0: "raid1",
    RaidProfile.RAID1: "raid1",
    RaidProfile.RAID10: "raid10",
}
MIN_DEVICES: dict[RaidProfile, int] = {
    RaidProfile.SINGLE: 1,
    RaidProfile.RAID0: 2,
    RaidProfile.RAID1: 2,
    RaidProfile.RAID10: 2,
}


def check_device(device: str, *, force: bool) -> None:
    """A real, unused block device with no signature (or ``force``: wipe the signatures)."""
    try:
        st = os.stat(device)
    except FileNotFoundError as exc:
        raise NotFound(f"device {device} does not exist") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"{device} is not a block device (use images= for a file)")
    check_not_held(device)
    _check_blank(device, force=force)


def check_not_held(device: str) -> None:
    """O_EXCL on a block device fails with EBUSY while it is mounted or held by a driver."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(f"device {device} is in use (mounted or held)") from exc
        raise FailedPrecondition(f"cannot open device {device}: {exc}") from exc
    os.close(fd)


def _check_blank(target: str, *, force: bool) -> None:
    found = fs.probe(target)
    if not found:
        return
    what = found.get("TYPE") or found.get("PTTYPE") or "a signature"
    if not force:
        raise FailedPrecondition(
            f"{target} already holds {what}; pass force to overwrite it")
    run(["wipefs", "--all", "--quiet", target], timeout=120)


def check_image(path: Path, *, force: bool) -> None:
    """An image path is usable: absent, or a blank (or ``force``) file attached nowhere.

    Checked before the creation intent is written, so that a rollback may detach every
    loop device of the pool's images: none of them can belong to anything else.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise InvalidArgument(f"image {path} exists and is not a regular file")
    if loop.find(path):
        raise FailedPrecondition(f"image {path} is in use as {loop.find(path)[0]}")
    found = fs.probe(str(path))
    if found and not force:
        what = found.get("TYPE") or found.get("PTTYPE") or "a signature"
        raise FailedPrecondition(f"{path} already holds {what}; pass force to overwrite it")


def make_image(path: Path, size: int, *, force: bool) -> bool:
    """Create a sparse image file; returns True when it was created (False: reused).

    An existing image (see ``check_image``) has its signatures wiped (``force``) and grows
    to ``size`` if smaller.
    """
    if path.exists():
        check_image(path, force=force)
        _check_blank(str(path), force=force)
        if path.stat().st_size < size:
            os.truncate(path, size)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def fs_for(count: int, layout: str) -> str:
    """The pool filesystem of ``count`` devices: btrfs for several, or for a subvolume
    layout (which only btrfs has); XFS for one."""
    return BTRFS if count > 1 or layout == PoolLayout.SUBVOLUME else XFS


def mkfs(devices: Sequence[str], profile: RaidProfile, fstype: str) -> str:
    """Format the pool filesystem ``fstype`` (:func:`fs_for`); returns it."""
    if fstype == XFS:
        run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", devices[0]], timeout=600)
        return XFS
    metadata = METADATA_PROFILE[profile] if len(devices) > 1 else "dup"
    run(["mkfs.btrfs", "-q", "-f", "-d", profile.value, "-m", metadata, *devices], timeout=600)
    return BTRFS


def mount(devices: Sequence[str], mountpoint: Path) -> None:
    """Mount the pool at ``mountpoint`` unless it already is (idempotent)."""
    current = mounts.mount_at(mountpoint)
    if current is not None:
        if current.source in devices:
            return
        raise FailedPrecondition(f"{mountpoint} already has {current.source} mounted")
    fstype = fs.fs_type(devices[0])
    if fstype not in (XFS, BTRFS):
        raise InvalidArgument(f"{devices[0]} holds {fstype or 'no filesystem'}, not a pool")
    mountpoint.mkdir(parents=True, exist_ok=True)
    options: list[str] = []
    if fstype == BTRFS:
        options = [f"device={d}" for d in devices]
    try:
        fs.mount(devices[0], mountpoint, fstype, options)
    except CommandError as exc:
        raise FailedPrecondition(
            f"cannot mount pool from {', '.join(devices)} at {mountpoint}: {exc.stderr}") from exc


def attach_sources(sources: Sequence[str]) -> list[str]:
    """Block devices for the sources: image files are loop-attached, devices pass through."""
    devices = []
    for src in sources:
        try:
            st = os.stat(src)
        except FileNotFoundError as exc:
            raise NotFound(f"pool source {src} does not exist") from exc
        if stat.S_ISBLK(st.st_mode):
            devices.append(src)
        elif stat.S_ISREG(st.st_mode):
            devices.append(loop.attach(src))
        else:
            raise InvalidArgument(f"pool source {src} is neither a block device nor a file")
    return devices


def release(mountpoint: Path, image_files: Sequence[str]) -> None:
    """Unmount the pool and detach the loop devices of its image files."""
    fs.umount(mountpoint)
    for image in image_files:
        loop.detach_file(image)
