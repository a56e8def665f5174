"""Two file calls Python's ``os`` lacks, through libc (ctypes).

``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` turns a range into a hole: a
replica applies a zero frame by punching one, so it stays as thin as its primary. Flag
values from ``linux/falloc.h``: KEEP_SIZE 0x01, PUNCH_HOLE 0x02 (PUNCH_HOLE requires
KEEP_SIZE). A filesystem without hole punching gets zeros written instead: same bytes,
less thin.

``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts writing a range back without waiting
(``linux/fs.h``: SYNC_FILE_RANGE_WRITE 2): a replica calls it after each extent, so the
disk works while the next frames arrive and a checkpoint's or the commit's fsync waits only
for the last few, instead of stalling the stream while every byte since the previous one is
written.
"""

from __future__ import annotations

import ctypes
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SYNC_FILE_RANGE_WRITE = 0x02
_ZEROS = bytes(1 << 20)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` to disk now,
    without waiting for it. Advisory: a failure is ignored, because nothing is promised
    until an fsync, which reports any write error itself."""
    if length > 0:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


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
