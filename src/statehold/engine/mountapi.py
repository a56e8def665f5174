"""The kernel's descriptor-based mount calls: ``open_tree``, ``mount_setattr``, ``move_mount``
and ``umount2``, through ctypes (Python has no wrappers).

They let :mod:`statehold.engine.mounts` bind exactly the object one descriptor holds onto
exactly the object another holds, and make the new mount read-only *before* it becomes
visible. Linux 5.12 or later (Debian 12 ships 6.1). Every function raises ``OSError`` with
the kernel's errno; the mount toolkit turns that into the error tree.
"""

from __future__ import annotations

import ctypes
import os

# include/uapi/linux/mount.h; syscall numbers are the same on every architecture
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1          # a detached copy of the mount, not the mount itself
AT_EMPTY_PATH = 0x1000         # the descriptor itself is the object
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
UMOUNT_NOFOLLOW = 0x8          # a symlink as the last component is not followed

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def clone_tree(fd: int) -> int:
    """A detached bind of the object ``fd`` holds (not recursive); a new descriptor."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH
    return _check(
        int(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(fd), ctypes.c_char_p(b""),
                          ctypes.c_uint(flags))),
        "open_tree",
    )


def set_readonly(tree: int) -> None:
    """Make a (detached) mount read-only."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        int(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(tree), ctypes.c_char_p(b""),
                          ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr),
                          ctypes.c_size_t(ctypes.sizeof(attr)))),
        "mount_setattr",
    )


def attach(tree: int, target: int) -> None:
    """Attach the detached mount ``tree`` onto the object ``target`` holds."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    _check(
        int(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(tree), ctypes.c_char_p(b""),
                          ctypes.c_int(target), ctypes.c_char_p(b""), ctypes.c_uint(flags))),
        "move_mount",
    )


def umount(path: str, flags: int = UMOUNT_NOFOLLOW) -> None:
    """``umount2(path, flags)``."""
    _check(int(_libc.umount2(os.fsencode(path), flags)), "umount2")
