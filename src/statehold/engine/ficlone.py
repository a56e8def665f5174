"""``FICLONE``: share all extents of one file with another (a reflink), in O(1).

The ioctl number is ``_IOW(0x94, 9, int)`` from ``linux/fs.h``: direction write (1 << 30),
argument size 4 (<< 16), type 0x94 (<< 8), number 9. The destination file descriptor is
the one the ioctl is issued on; the argument is the source descriptor. Both files must be
on the same reflink-capable filesystem (XFS with ``reflink=1``, btrfs).

``FICLONERANGE`` is ``_IOW(0x94, 13, struct file_clone_range)``: the argument is
``{s64 src_fd; u64 src_offset; u64 src_length; u64 dest_offset}`` (32 bytes, << 16). It
shares one range; offsets and length must be multiples of the filesystem block, except a
range that ends at the source's end of file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from statehold.errors import FailedPrecondition, StateholdError

FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
_CLONE_RANGE = struct.Struct("=qQQQ")


def reflink(src: Path, dst: Path, *, mode: int = 0o600) -> None:
    """Create (or replace) ``dst`` as a copy-on-write clone of ``src``, then fsync it.

    ``dst`` is opened with O_TRUNC: a leftover from an interrupted attempt is overwritten.
    """
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            try:
                fcntl.ioctl(dst_fd, FICLONE, src_fd)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL):
                    raise FailedPrecondition(
                        f"cannot reflink {src} to {dst}: the filesystem does not support FICLONE"
                    ) from exc
                raise StateholdError(f"FICLONE {src} -> {dst} failed: {exc}") from exc
            os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def reflink_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Share ``length`` bytes at ``offset`` of ``src_fd`` into ``dst_fd`` at the same offset."""
    arg = _CLONE_RANGE.pack(src_fd, offset, length, offset)
    try:
        fcntl.ioctl(dst_fd, FICLONERANGE, arg)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV):
            raise FailedPrecondition(
                "cannot reflink a range: the filesystem does not support FICLONERANGE") from exc
        raise StateholdError(f"FICLONERANGE of {length} bytes at {offset} failed: {exc}") from exc
