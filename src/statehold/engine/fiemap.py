"""The ``FS_IOC_FIEMAP`` ioctl: where a file's bytes live on its filesystem.

FIEMAP is how Statehold learns which extents two reflinked snapshots still share: a range
both files map to the same physical address cannot differ. Only this module speaks the
ioctl; :mod:`statehold.engine.extents` decides what the mappings mean.

Wire facts (``include/uapi/linux/fiemap.h``, ``Documentation/filesystems/fiemap.rst``)::

    struct fiemap {                    /* 32 bytes, then fm_extent_count extents */
        __u64 fm_start;                /* logical offset to map from (in)        */
        __u64 fm_length;               /* logical length to map (in)             */
        __u32 fm_flags;                /* FIEMAP_FLAG_* (in/out)                 */
        __u32 fm_mapped_extents;       /* extents filled in (out)                */
        __u32 fm_extent_count;         /* room in fm_extents (in)                */
        __u32 fm_reserved;
        struct fiemap_extent fm_extents[];
    };
    struct fiemap_extent {             /* 56 bytes */
        __u64 fe_logical, fe_physical, fe_length;
        __u64 fe_reserved64[2];
        __u32 fe_flags;                /* FIEMAP_EXTENT_* */
        __u32 fe_reserved[3];
    };

``FS_IOC_FIEMAP`` is ``_IOWR('f', 11, struct fiemap)``: direction read|write (3 << 30),
size 32 << 16, type ``'f'`` (0x66) << 8, number 11 -> ``0xC020660B``.

On btrfs ``fe_physical`` is an address in the filesystem's own logical space rather than
on a disk; it is still one address per stored byte, which is all a sharing test needs.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from statehold.engine.files import open_readonly
from statehold.errors import Unavailable

FS_IOC_FIEMAP = 0xC020660B

FIEMAP_FLAG_SYNC = 0x0001
"""Write back dirty pages before mapping, so delayed allocation has real addresses."""

FIEMAP_MAX_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
"""``fm_length`` meaning "to the end of the file"."""

_HEADER = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQI12x")
assert _HEADER.size == 32 and _EXTENT.size == 56

BATCH = 512
"""Extents asked for per ioctl call; fragmented files simply take several calls."""


class ExtentFlag(enum.IntFlag):
    """``FIEMAP_EXTENT_*``: what the kernel says about one extent."""

    LAST = 0x0001            # the last extent of the file
    UNKNOWN = 0x0002         # location not known yet
    DELALLOC = 0x0004        # delayed allocation: no physical address yet (implies UNKNOWN)
    ENCODED = 0x0008         # compressed/encoded: fe_physical is not a byte-for-byte address
    DATA_ENCRYPTED = 0x0080  # encrypted data (implies ENCODED)
    NOT_ALIGNED = 0x0100     # not block aligned
    DATA_INLINE = 0x0200     # data stored in metadata (implies NOT_ALIGNED)
    DATA_TAIL = 0x0400       # several files' tails packed in one block (implies NOT_ALIGNED)
    UNWRITTEN = 0x0800       # allocated but never written: reads as zeros
    MERGED = 0x1000          # reported merged from several on-disk extents
    SHARED = 0x2000          # shared with another file (reflink/snapshot)


UNTRUSTED = (
    ExtentFlag.UNKNOWN
    | ExtentFlag.DELALLOC
    | ExtentFlag.ENCODED
    | ExtentFlag.DATA_ENCRYPTED
    | ExtentFlag.NOT_ALIGNED
    | ExtentFlag.DATA_INLINE
    | ExtentFlag.DATA_TAIL
)
"""Flags under which ``fe_physical`` does not identify the bytes: such extents never
compare equal to anything."""

INFORMATIONAL = ExtentFlag.LAST | ExtentFlag.MERGED | ExtentFlag.SHARED
"""Flags that say nothing about content; ignored when two mappings are compared."""


@dataclass(frozen=True, slots=True)
class Extent:
    """One mapped range of a file: ``length`` bytes at ``logical`` stored at ``physical``."""

    logical: int
    physical: int
    length: int
    flags: ExtentFlag

    @property
    def end(self) -> int:
        return self.logical + self.length


def decode(buf: bytes) -> tuple[int, list[Extent]]:
    """Parse a filled ``struct fiemap`` buffer: (fm_mapped_extents, extents). Pure."""
    _start, _length, _flags, mapped, _count, _res = _HEADER.unpack_from(buf, 0)
    extents = []
    for i in range(mapped):
        logical, physical, length, _r0, _r1, flags = _EXTENT.unpack_from(
            buf, _HEADER.size + i * _EXTENT.size
        )
        extents.append(Extent(logical, physical, length, ExtentFlag(flags)))
    return mapped, extents


def _call(fd: int, start: int, *, sync: bool) -> list[Extent]:
    flags = FIEMAP_FLAG_SYNC if sync else 0
    buf = bytearray(_HEADER.size + BATCH * _EXTENT.size)
    _HEADER.pack_into(buf, 0, start, FIEMAP_MAX_OFFSET - start, flags, 0, BATCH, 0)
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    return decode(bytes(buf))[1]


def iter_extents(fd: int, *, sync: bool = True) -> Iterator[Extent]:
    """Yield every extent of the open file ``fd`` in logical order.

    Raises OSError (EOPNOTSUPP on filesystems without FIEMAP) for the caller to translate.
    """
    start = 0
    while True:
        batch = _call(fd, start, sync=sync)
        if not batch:
            return
        yield from batch
        if batch[-1].flags & ExtentFlag.LAST:
            return
        nxt = batch[-1].end
        if nxt <= start:  # the kernel made no progress: never loop forever
            return
        start = nxt
        sync = False  # one write-back per file is enough


class FiemapUnsupported(Exception):
    """The filesystem does not implement FIEMAP (callers fall back to SEEK_DATA)."""


def file_extents(path: Path, *, sync: bool = True) -> list[Extent]:
    """All extents of ``path``; FIEMAP_FLAG_SYNC first so delayed allocation is resolved."""
    fd = open_readonly(path)
    try:
        return list(iter_extents(fd, sync=sync))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise FiemapUnsupported(str(path)) from exc
        raise Unavailable(f"{path}: FIEMAP failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


Raw = tuple[int, int, int, int, int, int]
"""One ``struct fiemap_extent`` as the kernel filled it: (logical, physical, length,
reserved, reserved, flags); the reserved words are zero."""

RAW_FLAGS = 5
RAW_BATCH = 8192


def raw_extents(path: Path, *, sync: bool = True) -> list[Raw]:
    """Every extent of ``path`` as plain tuples: :func:`file_extents` without building an
    object per extent, for the one caller that maps files while filesystems are frozen (a
    group snapshot's catch-up: tens of thousands of extents, every millisecond counts).
    Same errors as :func:`file_extents`."""
    fd = open_readonly(path)
    try:
        out: list[Raw] = []
        start, flags = 0, FIEMAP_FLAG_SYNC if sync else 0
        buf = bytearray(_HEADER.size + RAW_BATCH * _EXTENT.size)
        while True:
            _HEADER.pack_into(buf, 0, start, FIEMAP_MAX_OFFSET - start, flags, 0, RAW_BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if not mapped:
                return out
            out += _RAW.iter_unpack(memoryview(buf)[_HEADER.size:_HEADER.size + mapped * _RAW.size])
            last = out[-1]
            if last[RAW_FLAGS] & ExtentFlag.LAST or last[0] + last[2] <= start:
                return out
            start, flags = last[0] + last[2], 0
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise FiemapUnsupported(str(path)) from exc
        raise Unavailable(f"{path}: FIEMAP failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


_RAW = struct.Struct("=QQQQQI12x")  # _EXTENT, all six fields kept
