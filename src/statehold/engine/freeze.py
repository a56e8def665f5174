"""``FIFREEZE`` / ``FITHAW``: quiesce a mounted filesystem so a reflink of its device is
consistent, plus the two cheaper flushes used when freezing is not wanted.

Freezing flushes dirty data and the journal to the (loop) device, which with direct I/O
means to the backing file; the snapshot then sees a clean filesystem. A frozen filesystem
blocks every writer, so thawing happens in ``finally`` whatever went wrong, and crash
recovery thaws the mount named in an unfinished intent.

The ioctls are issued directly (no ``fsfreeze`` process: a snapshot should cost
milliseconds). From ``linux/fs.h``: ``FIFREEZE = _IOWR('X', 119, int)`` and
``FITHAW = _IOWR('X', 120, int)``: direction read|write (3 << 30), size 4 (<< 16), type
'X' = 0x58 (<< 8), numbers 119 and 120. ``BLKFLSBUF = _IO(0x12, 97)`` drops (after
writing back) a block device's buffer cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator

from statehold.errors import FailedPrecondition, StateholdError

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
BLKFLSBUF = 0x1261

_libc = ctypes.CDLL(None, use_errno=True)


def _ioctl_on(path: str, request: int, *, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def freeze(target: str) -> None:
    """Freeze the filesystem mounted at ``target`` (FailedPrecondition if it cannot)."""
    try:
        _ioctl_on(target, FIFREEZE)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(f"{target} is already frozen") from exc
        raise StateholdError(f"cannot freeze {target}: {exc}") from exc


def freeze_fd(fd: int, target: str) -> None:
    """Freeze the filesystem of an open directory ``fd`` (``target`` names it in errors).

    The freeze keeper (:mod:`freezekeeper`) holds such a descriptor from freeze to thaw, so
    it thaws exactly the superblock it froze even if the path is mounted over meanwhile.
    """
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(f"{target} is already frozen") from exc
        raise StateholdError(f"cannot freeze {target}: {exc}") from exc


def thaw_fd(fd: int) -> bool:
    """Thaw the filesystem of an open descriptor; False when it was not frozen."""
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError:
        return False
    return True


def thaw(target: str) -> bool:
    """Thaw ``target``; False when it was not frozen (or is gone), which is fine."""
    try:
        _ioctl_on(target, FITHAW)
    except OSError:
        return False
    return True


def is_frozen(target: str) -> bool:
    """Probe without blocking: freezing a frozen filesystem fails with EBUSY."""
    try:
        _ioctl_on(target, FIFREEZE)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    thaw(target)
    return False


def syncfs(target: str) -> None:
    """Write back everything dirty in the filesystem mounted at ``target``."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StateholdError(f"syncfs {target}: {os.strerror(err)}")
    finally:
        os.close(fd)


def flush_device(device: str) -> None:
    """Write back and drop a block device's buffer cache (buffered writes to /dev/loopN)."""
    try:
        _ioctl_on(device, BLKFLSBUF)
    except OSError as exc:
        raise StateholdError(f"cannot flush {device}: {exc}") from exc


@contextlib.contextmanager
def frozen(target: str | None) -> Iterator[None]:
    """Freeze ``target`` for the block, thaw afterwards; ``None`` freezes nothing."""
    if target is None:
        yield
        return
    freeze(target)
    try:
        yield
    finally:
        thaw(target)
