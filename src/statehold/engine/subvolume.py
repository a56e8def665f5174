"""btrfs subvolumes through their ioctls: create, snapshot, delete, read-only flag, sync.

The subvolume pool layout (:mod:`layouts`) keeps each volume's backing file alone in a
subvolume, because a snapshot of a subvolume copies its root and shares the rest of its
tree: its cost does not depend on how fragmented the file inside is, where a reflink of the
file costs time per extent (docs/design/snapshots.md). No ``btrfs`` process: a snapshot
inside a freeze window should cost the ioctl, not a fork and exec.

From ``linux/btrfs.h`` (magic 0x94; ``_IOW`` = direction 1 << 30, size << 16, type << 8):

* ``struct btrfs_ioctl_vol_args`` = ``{s64 fd; char name[4088]}`` (4096 bytes);
  ``BTRFS_IOC_SNAP_DESTROY = _IOW(0x94, 15, ...)``;
* ``struct btrfs_ioctl_vol_args_v2`` = ``{s64 fd; u64 transid; u64 flags; u64 unused[4];
  char name[4040]}`` (4096 bytes); ``BTRFS_IOC_SNAP_CREATE_V2 = _IOW(0x94, 23, ...)``,
  ``BTRFS_IOC_SUBVOL_CREATE_V2 = _IOW(0x94, 24, ...)``; flag ``BTRFS_SUBVOL_RDONLY = 1 << 1``;
* ``BTRFS_IOC_SUBVOL_GETFLAGS = _IOR(0x94, 25, u64)``, ``SETFLAGS = _IOW(0x94, 26, u64)``;
* ``BTRFS_IOC_SYNC = _IO(0x94, 8)``: start write-back of the whole filesystem and commit
  its transaction;
* ``struct btrfs_ioctl_search_args`` = ``{struct btrfs_ioctl_search_key key; char
  buf[3992]}`` (4096 bytes), the key ``{u64 tree_id, min_objectid, max_objectid,
  min_offset, max_offset, min_transid, max_transid; u32 min_type, max_type, nr_items,
  unused; u64 unused1..4}`` (104 bytes); ``BTRFS_IOC_TREE_SEARCH = _IOWR(0x94, 17, ...)``.
  A deleted subvolume keeps an orphan item (objectid ``BTRFS_ORPHAN_OBJECTID`` = -5, type
  ``BTRFS_ORPHAN_ITEM_KEY`` = 48, offset = its id) in the root tree (tree 1) until btrfs's
  cleaner has dropped all of its tree.

A deletion wakes the cleaner only through ``BTRFS_IOC_SYNC`` (a ``syncfs`` commits but lets
the cleaner sleep until the next periodic commit, up to 30 s later).

A snapshot ioctl commits the transaction itself, so a snapshot is durable once it returns.
A deletion only ends its transaction; :func:`destroy` commits it (``BTRFS_IOC_SYNC``) so
that a deleted subvolume cannot come back after a crash once its record is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from statehold.errors import FailedPrecondition, StateholdError

BTRFS_IOC_SNAP_DESTROY = 0x5000940F
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417
BTRFS_IOC_SUBVOL_CREATE_V2 = 0x50009418
BTRFS_IOC_SUBVOL_GETFLAGS = 0x80089419
BTRFS_IOC_SUBVOL_SETFLAGS = 0x4008941A
BTRFS_IOC_SYNC = 0x9408
BTRFS_IOC_TREE_SEARCH = 0xD0009411
ROOT_TREE_OBJECTID = 1
ORPHAN_OBJECTID = 2**64 - 5
ORPHAN_ITEM_KEY = 48
BTRFS_SUBVOL_RDONLY = 1 << 1
FIRST_FREE_OBJECTID = 256
"""The inode number of every subvolume's root directory."""

ARGS_SIZE = 4096
_V2_HEAD = struct.Struct("=qQQ32x")   # fd, transid, flags, the size/qgroup union
_V1_HEAD = struct.Struct("=q")        # fd
NAME_MAX_V2 = ARGS_SIZE - _V2_HEAD.size - 1
_FLAGS = struct.Struct("=Q")
_SEARCH_KEY = struct.Struct("=7Q4I32x")  # ids, offsets, transids; types, nr_items

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _opendir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _name(name: str, room: int) -> bytes:
    raw = name.encode()
    if not raw or b"/" in raw or b"\0" in raw or len(raw) > room or name in (".", ".."):
        raise StateholdError(f"not a subvolume name: {name!r}")
    return raw


def _v2(fd: int, flags: int, name: str) -> bytearray:
    arg = bytearray(ARGS_SIZE)
    _V2_HEAD.pack_into(arg, 0, fd, 0, flags)
    raw = _name(name, NAME_MAX_V2)
    arg[_V2_HEAD.size:_V2_HEAD.size + len(raw)] = raw
    return arg


def _fail(what: str, path: Path, exc: OSError) -> StateholdError:
    if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EXDEV):
        return FailedPrecondition(f"cannot {what} {path}: not on a btrfs filesystem ({exc})")
    if exc.errno == errno.EEXIST:
        return FailedPrecondition(f"cannot {what} {path}: it exists already")
    return StateholdError(f"cannot {what} {path}: {exc}")


def is_subvolume(path: Path) -> bool:
    """True for the root directory of a btrfs subvolume (inode 256, a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == FIRST_FREE_OBJECTID


def create(path: Path) -> None:
    """Create an empty subvolume at ``path`` (its parent must exist)."""
    with _opendir(path.parent) as parent:
        try:
            fcntl.ioctl(parent, BTRFS_IOC_SUBVOL_CREATE_V2, _v2(0, 0, path.name))
        except OSError as exc:
            raise _fail("create subvolume", path, exc) from exc


def snapshot(src: Path, dst: Path, *, readonly: bool) -> None:
    """Snapshot subvolume ``src`` as a new subvolume ``dst`` (read-only if asked).

    O(1) in the size and fragmentation of what ``src`` holds; the ioctl commits the
    transaction, so ``dst`` is durable on return."""
    with _opendir(src) as source, _opendir(dst.parent) as parent:
        arg = _v2(source, BTRFS_SUBVOL_RDONLY if readonly else 0, dst.name)
        try:
            fcntl.ioctl(parent, BTRFS_IOC_SNAP_CREATE_V2, arg)
        except OSError as exc:
            raise _fail("snapshot into", dst, exc) from exc


def destroy(path: Path, *, commit: bool = True) -> bool:
    """Delete the subvolume at ``path`` (read-only or not); False when there is none.

    The space comes back later, when btrfs's cleaner has dropped the tree. ``commit``:
    commit the deletion before returning, with ``BTRFS_IOC_SYNC``, which also wakes the
    cleaner, so the tree is dropped now rather than at a later commit that a snapshot's
    freeze may be waiting on."""
    if not is_subvolume(path):
        return False
    arg = bytearray(ARGS_SIZE)
    raw = _name(path.name, ARGS_SIZE - _V1_HEAD.size - 1)
    arg[_V1_HEAD.size:_V1_HEAD.size + len(raw)] = raw
    with _opendir(path.parent) as parent:
        try:
            fcntl.ioctl(parent, BTRFS_IOC_SNAP_DESTROY, arg)
        except OSError as exc:
            raise _fail("delete subvolume", path, exc) from exc
        if commit:
            _sync_fd(parent, "commit the deletion of", path)
    return True


def readonly(path: Path) -> bool:
    """Whether subvolume ``path`` is read-only."""
    with _opendir(path) as fd:
        buf = bytearray(_FLAGS.size)
        try:
            fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
        except OSError as exc:
            raise _fail("read the flags of", path, exc) from exc
    return bool(_FLAGS.unpack(buf)[0] & BTRFS_SUBVOL_RDONLY)


def set_readonly(path: Path, value: bool = True) -> None:
    """Set (or clear) the read-only flag of subvolume ``path``."""
    with _opendir(path) as fd:
        buf = bytearray(_FLAGS.size)
        try:
            fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
            flags = _FLAGS.unpack(buf)[0]
            flags = flags | BTRFS_SUBVOL_RDONLY if value else flags & ~BTRFS_SUBVOL_RDONLY
            fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, _FLAGS.pack(flags))
        except OSError as exc:
            raise _fail("set the flags of", path, exc) from exc


def sync(path: Path) -> None:
    """``BTRFS_IOC_SYNC`` on the filesystem holding ``path``: flush and commit now, so that
    a snapshot taken right after has (almost) no transaction left to commit."""
    with _opendir(path) as fd:
        _sync_fd(fd, "sync", path)


def _sync_fd(fd: int, what: str, path: Path) -> None:
    try:
        fcntl.ioctl(fd, BTRFS_IOC_SYNC, 0)
    except OSError as exc:
        raise _fail(what, path, exc) from exc


def dropping(path: Path) -> int:
    """How many deleted subvolumes of the filesystem holding ``path`` btrfs's cleaner has
    not finished dropping (their orphan items in the root tree; at least this many)."""
    args = bytearray(ARGS_SIZE)
    _SEARCH_KEY.pack_into(args, 0, ROOT_TREE_OBJECTID, ORPHAN_OBJECTID, ORPHAN_OBJECTID,
                          0, 2**64 - 1, 0, 2**64 - 1, ORPHAN_ITEM_KEY, ORPHAN_ITEM_KEY,
                          4096, 0)
    with _opendir(path) as fd:
        try:
            fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, args)
        except OSError as exc:
            raise _fail("look for deleted subvolumes in", path, exc) from exc
    return int(_SEARCH_KEY.unpack_from(args, 0)[9])


def wait_cleaned(path: Path, limit: float, *, every: float = 0.05) -> float:
    """Wait, at most ``limit`` seconds, until btrfs's cleaner has dropped every deleted
    subvolume of the filesystem holding ``path`` (woken first: it may be asleep for up to
    30 s); returns the seconds waited, 0 when nothing was left to drop.

    Why: while the cleaner drops a deleted snapshot of a much-written volume (seconds, for
    ~100,000 extents), the transaction commits carry its work, and a snapshot ioctl commits:
    a snapshot taken then held a mounted volume frozen up to a second instead of tens of ms
    (docs/design/snapshots.md). Waiting before the freeze moves that time into the call,
    where no application waits. After ``limit`` the caller goes on anyway: the snapshot is
    as correct, only its window longer."""
    if not dropping(path):
        return 0.0
    start = time.monotonic()
    sync(path)  # the one call that wakes the cleaner now
    while True:
        waited = time.monotonic() - start
        if not dropping(path) or waited >= limit:
            return waited
        time.sleep(min(every, limit - waited))


def commit_fd(fd: int, path: Path) -> None:
    """``syncfs`` the filesystem of an open descriptor: commits btrfs's transaction."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise StateholdError(f"syncfs {path}: {os.strerror(err)}")
