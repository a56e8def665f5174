"""``FICLONE``: share all extents of one file with another (a reflink), in O(1).

The ioctl number is ``_IOW(0x94, 9, int)`` from ``linux/fs.h``: direction write (1 << 30),
argument size 4 (<< 16), type 0x94 (<< 8), number 9. The destination file descriptor is
the one the ioctl is issued on; the argument is the source descriptor. Both files must be
on the same reflink-capable filesystem (XFS with ``reflink=1``, btrfs).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from statehold.errors import FailedPrecondition, StateholdError

FICLONE = 0x40049409


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
