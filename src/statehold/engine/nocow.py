"""Volumes of a subvolume pool written in place: btrfs's NOCOW inode flag, and when to set it.

A volume's backing file under btrfs's default copy-on-write pays for every 4 KiB write with
a new extent, a checksum and their metadata: measured through the engine, 4 KiB random
writes ran at 0.13 of the same writes on an XFS file (docs/design/snapshots.md). With the
NOCOW flag (``chattr +C``) btrfs writes a block in place unless a snapshot still shares it,
which it copies once: 0.52 of XFS, sequential writes at par. A subvolume snapshot stays
O(1) in extents either way.

The price is btrfs's data checksums: a NOCOW file has none. On a single-copy data profile a
checksum only turns silent corruption into a read error (the default XFS pool has none
either); on a redundant one (dup, raid1*, raid10, raid5/6) it is what lets btrfs read the
good copy and scrub repair the bad one. So a volume is made NOCOW when, and only when, the
pool filesystem keeps a single copy of data (:func:`data_redundant`), decided once at the
volume's creation and kept on disk by the flag itself.

The flag is set on the volume's subvolume root directory before any file is in it: btrfs
gives it to every file created there (the backing file, a replica's work file), and a
snapshot or writable clone of the subvolume copies it. That matters beyond speed: btrfs
refuses a reflink between a NOCOW and a copy-on-write file (EINVAL), and a replica's
incremental reflinks its base snapshot's file into the work file beside the volume.

From ``linux/fs.h`` and ``linux/btrfs.h`` (64-bit):

* ``FS_IOC_GETFLAGS = _IOR('f', 1, long)``, ``FS_IOC_SETFLAGS = _IOW('f', 2, long)`` (the
  kernel reads and writes an ``int``); ``FS_NOCOW_FL = 0x00800000``;
* ``BTRFS_IOC_SPACE_INFO = _IOWR(0x94, 20, struct btrfs_ioctl_space_args)``, where
  ``btrfs_ioctl_space_args`` = ``{u64 space_slots; u64 total_spaces; struct
  btrfs_ioctl_space_info spaces[]}`` and each ``btrfs_ioctl_space_info`` = ``{u64 flags;
  u64 total_bytes; u64 used_bytes}``; a call with ``space_slots = 0`` returns the count.
  Block group flags: ``DATA = 1 << 0``; profiles ``RAID1 = 1 << 4``, ``DUP = 1 << 5``,
  ``RAID10 = 1 << 6``, ``RAID5 = 1 << 7``, ``RAID6 = 1 << 8``, ``RAID1C3 = 1 << 9``,
  ``RAID1C4 = 1 << 10``.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from statehold.errors import StateholdError

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_NOCOW_FL = 0x00800000
BTRFS_IOC_SPACE_INFO = 0xC0109414
BLOCK_GROUP_DATA = 1 << 0
REDUNDANT_PROFILES = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10)
"""raid1, dup, raid10, raid5, raid6, raid1c3, raid1c4: profiles that keep a second copy."""

_HEAD = struct.Struct("=QQ")
_INFO = struct.Struct("=QQQ")
_FLAGS = struct.Struct("=i4x")


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def _flags(fd: int) -> int:
    buf = bytearray(_FLAGS.size)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    flags: int = _FLAGS.unpack(buf)[0]
    return flags


def is_set(path: Path) -> bool:
    """Whether ``path`` (a file or directory on btrfs) carries the NOCOW flag."""
    fd = _open(path)
    try:
        return bool(_flags(fd) & FS_NOCOW_FL)
    except OSError as exc:
        raise StateholdError(f"cannot read the inode flags of {path}: {exc}") from exc
    finally:
        os.close(fd)


def set_flag(directory: Path) -> None:
    """Give ``directory`` the NOCOW flag, which every file created in it inherits.

    Only an empty directory: btrfs ignores the flag on a file that already holds data, so
    a directory with files in it would give a mix."""
    fd = _open(directory)
    try:
        with os.scandir(fd) as entries:
            empty = next(entries, None) is None
        if not empty:
            raise StateholdError(f"{directory} is not empty: NOCOW is set before any file")
        flags = _flags(fd)
        if not flags & FS_NOCOW_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS.pack(flags | FS_NOCOW_FL))
    except OSError as exc:
        raise StateholdError(f"cannot set NOCOW on {directory}: {exc}") from exc
    finally:
        os.close(fd)


def space_flags(path: Path) -> list[int]:
    """The block group flags of every space the btrfs filesystem holding ``path`` has."""
    fd = _open(path)
    try:
        head = bytearray(_HEAD.size)
        fcntl.ioctl(fd, BTRFS_IOC_SPACE_INFO, head)
        count = _HEAD.unpack(head)[1]
        buf = bytearray(_HEAD.size + count * _INFO.size)
        _HEAD.pack_into(buf, 0, count, 0)
        fcntl.ioctl(fd, BTRFS_IOC_SPACE_INFO, buf)
    except OSError as exc:
        raise StateholdError(f"cannot read the space info of the btrfs holding {path}: "
                             f"{exc}") from exc
    finally:
        os.close(fd)
    got = min(count, _HEAD.unpack_from(buf)[1])
    return [_INFO.unpack_from(buf, _HEAD.size + i * _INFO.size)[0] for i in range(got)]


def data_redundant(path: Path) -> bool:
    """Whether the btrfs holding ``path`` keeps more than one copy of data (any data space
    with a redundant profile): then its checksums are worth the copy-on-write."""
    return any(flags & BLOCK_GROUP_DATA and flags & REDUNDANT_PROFILES
               for flags in space_flags(path))
