"""``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``: turn a range into a hole.

A replica applies a zero frame by punching a hole, so it stays as thin as its primary.
Flag values from ``linux/falloc.h``: KEEP_SIZE 0x01, PUNCH_HOLE 0x02 (PUNCH_HOLE requires
KEEP_SIZE). Python's ``os`` has no fallocate with flags, so libc's is called through ctypes.
A filesystem without hole punching gets zeros written instead: same bytes, less thin.
"""

from __future__ import annotations

import ctypes
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1 << 20)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset + length)`` of ``fd`` read as zeros; the size never changes.

    Raises OSError for a failure other than "not supported" (the caller translates it).
    """
    if length <= 0:
        return
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")
    end = min(offset + length, os.fstat(fd).st_size)
    pos = offset
    while pos < end:
        n = min(len(_ZEROS), end - pos)
        pos += os.pwrite(fd, _ZEROS[:n], pos)
