"""Paths named by an untrusted caller, resolved so that what was checked is what is used.

A CSI target path is a string chosen by whoever can call the socket, inside a directory
(an *allowed root*) that other processes may write to. Checking the string and then
handing it to ``mount`` leaves a window in which a component can be swapped for a symlink
or a mount leading elsewhere (time of check ≠ time of use). Here a path is instead opened
once, **beneath** its root and **component by component**, into an ``O_PATH`` descriptor
(:class:`Handle`); every later step — comparing it with a mount, binding onto it, marking
it, removing it — works on that descriptor (``*at`` calls, ``/proc/self/fd/N``), never on
the string again.

Each component is opened with ``openat2(2)`` (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS``, plus ``RESOLVE_NO_XDEV`` for the directories on the way), so:

* a **symlink** anywhere below the root is refused (the root itself may be a symlink: it is
  configuration, opened once with ordinary resolution);
* a **mount point** on the way is refused: a path never leads through another filesystem
  (a tmpfs, a bind mount of some other directory, a volume's own mount) below its root;
* the **last** component may be a mount point: it is opened without ``RESOLVE_NO_XDEV``,
  so the handle is the root of the top-most mount there and :func:`is_mountpoint` tells.

What the driver creates it marks with the extended attribute :data:`MARKER` (``trusted.*``:
only a process with ``CAP_SYS_ADMIN`` can set one), so it later removes exactly the file or
directory it made and never one that merely sits at the same path (:func:`remove_created`).

Errors: a path that cannot be used as it stands (a symlink or a mount point on the way, a
file where a directory is needed) is :class:`~statehold.errors.FailedPrecondition`; one
that is not inside a root is :class:`~statehold.errors.InvalidArgument`. No ``OSError``
leaves this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from statehold.errors import FailedPrecondition, InvalidArgument

# openat2(2): include/uapi/linux/openat2.h. The syscall number is the same on every
# architecture (new syscalls share one table since 5.1).
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_STEP = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
"""How one component is opened: never above its directory, never through a link."""

MARKER = "trusted.statehold.created"
"""Extended attribute on a target the driver created; its value names the volume."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, name: str, flags: int, resolve: int) -> int:
    """``openat2(dirfd, name, {flags, 0, resolve})``; OSError as ``os.open`` raises it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = int(
        _libc.syscall(
            ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(name)),
            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
    return fd


@dataclass(eq=False)
class Handle:
    """An ``O_PATH`` descriptor of one file or directory, and the path it was reached by
    (for messages only: the object may have been renamed since)."""

    fd: int
    path: Path

    @property
    def proc(self) -> str:
        """The descriptor as a path the kernel resolves to exactly this object."""
        return f"/proc/self/fd/{self.fd}"

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    @property
    def mount_id(self) -> int:
        """The id (mountinfo's first field) of the mount this object is reached through."""
        with open(f"/proc/self/fdinfo/{self.fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
        raise FailedPrecondition(f"the kernel reports no mount id for {self.path}")  # pragma: no cover

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Located:
    """A path split at the allowed root it lies in: ``root`` (as configured) + ``parts``."""

    root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]


def locate(path: Path | str, roots: Sequence[Path]) -> Located:
    """Which root ``path`` lies strictly inside, by its text (the root as configured, or
    the root's real path); InvalidArgument when none, or when the path is not absolute
    and normalised."""
    text = str(path)
    if not text.startswith("/") or os.path.normpath(text) != text.rstrip("/") or "//" in text:
        raise InvalidArgument(f"{text!r} is not an absolute, normalised path")
    for root in roots:
        for form in dict.fromkeys((os.path.normpath(str(root)), os.path.realpath(root))):
            prefix = form.rstrip("/") + "/"
            if text.startswith(prefix) and len(text) > len(prefix):
                parts = tuple(text[len(prefix):].rstrip("/").split("/"))
                if any(p in ("", ".", "..") for p in parts):
                    break
                return Located(Path(root), parts)
    raise InvalidArgument(f"{text!r} is outside the allowed roots")


def _refusal(exc: OSError, where: Path) -> FailedPrecondition:
    if exc.errno == errno.ELOOP:
        return FailedPrecondition(f"{where} is a symlink; no symlink is followed below an allowed root")
    if exc.errno == errno.EXDEV:
        return FailedPrecondition(
            f"{where} is a mount point (or leads out of its root); a path never crosses a mount "
            "below its allowed root")
    if exc.errno == errno.ENOTDIR:
        return FailedPrecondition(f"{where} is not a directory")
    return FailedPrecondition(f"cannot open {where}: {exc.strerror or exc}")


def open_root(root: Path) -> Handle:
    """The allowed root itself (configuration: its own symlinks are followed)."""
    try:
        return Handle(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), Path(root))
    except OSError as exc:
        raise FailedPrecondition(f"allowed root {root} cannot be opened: {exc.strerror or exc}") from exc


def _step(parent: Handle, name: str, *, xdev: bool, directory: bool) -> Handle | None:
    """One component below ``parent``; None when it does not exist."""
    where = parent.path / name
    # no O_NOFOLLOW: with it openat2 would hand back the symlink itself; without it,
    # RESOLVE_NO_SYMLINKS refuses a trailing symlink too (ELOOP)
    flags = os.O_PATH | (os.O_DIRECTORY if directory else 0)
    try:
        fd = openat2(parent.fd, name, flags, RESOLVE_STEP | (0 if xdev else RESOLVE_NO_XDEV))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refusal(exc, where) from exc
    return Handle(fd, where)


def open_parent(located: Located, *, create: bool = False, mode: int = 0o750) -> Handle | None:
    """The directory that holds ``located``'s last component, reached from its root one
    component at a time, never through a symlink or a mount point. Missing directories are
    created when ``create`` (they are the CO's, never removed here); otherwise None."""
    current = open_root(located.root)
    try:
        for name in located.parts[:-1]:
            nxt = _step(current, name, xdev=False, directory=True)
            if nxt is None:
                if not create:
                    current.close()
                    return None
                try:
                    os.mkdir(name, mode, dir_fd=current.fd)
                except FileExistsError:
                    pass  # created meanwhile: opened (and checked) below like any other
                except OSError as exc:
                    raise _refusal(exc, current.path / name) from exc
                nxt = _step(current, name, xdev=False, directory=True)
                if nxt is None:
                    raise FailedPrecondition(f"{current.path / name} vanished while being created")
            current.close()
            current = nxt
        return current
    except BaseException:
        current.close()
        raise


def lookup(parent: Handle, name: str) -> Handle | None:
    """The last component: the root of the top-most mount there when it is a mount point,
    else the file or directory itself; None when nothing is there. A symlink there is
    FailedPrecondition (never followed, never removed)."""
    return _step(parent, name, xdev=True, directory=False)


def is_mountpoint(parent: Handle, child: Handle) -> bool:
    """True when ``child`` (from :func:`lookup`) is the root of a mount stacked at its name."""
    return child.mount_id != parent.mount_id


@contextlib.contextmanager
def opened(located: Located, *,
           create_parents: bool = False) -> Iterator[tuple[Handle | None, Handle | None]]:
    """``(parent, last)`` of a located path, both closed after the block (either may be None)."""
    parent = open_parent(located, create=create_parents)
    child = lookup(parent, located.name) if parent is not None else None
    try:
        yield parent, child
    finally:
        if child is not None:
            child.close()
        if parent is not None:
            parent.close()


# -- what the driver creates, and removes -----------------------------------------------------
def _mark(fd_path: str, owner: str) -> None:
    try:
        os.setxattr(fd_path, MARKER, owner.encode())
    except OSError as exc:
        # no trusted xattrs here (an old or exotic filesystem): the target is then never
        # removed by the driver, which errs on the side of leaving a harmless empty entry
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def marker(handle: Handle) -> str | None:
    """Who created this object (the value of :data:`MARKER`), or None."""
    try:
        return os.getxattr(handle.proc, MARKER).decode(errors="replace")
    except OSError:
        return None


def make_directory(parent: Handle, name: str, owner: str | None, mode: int = 0o750) -> Handle:
    """Create directory ``name`` in ``parent``, marked as ``owner``'s (unless None), and
    open it. An entry that appeared meanwhile is FailedPrecondition (someone else's)."""
    where = parent.path / name
    try:
        os.mkdir(name, mode, dir_fd=parent.fd)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create {where}: {exc.strerror or exc}") from exc
    made = _step(parent, name, xdev=False, directory=True)
    if made is None:
        raise FailedPrecondition(f"{where} vanished right after it was created")
    try:
        if owner is not None:
            _mark(made.proc, owner)
    except OSError as exc:
        made.close()
        raise FailedPrecondition(f"cannot mark {where}: {exc.strerror or exc}") from exc
    return made


def make_file(parent: Handle, name: str, owner: str, mode: int = 0o600) -> Handle:
    """Create an empty regular file ``name`` in ``parent`` (``O_EXCL``: never an existing
    one), marked as ``owner``'s, and return an ``O_PATH`` handle of that very file."""
    where = parent.path / name
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=parent.fd)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create {where}: {exc.strerror or exc}") from exc
    try:
        _mark(f"/proc/self/fd/{fd}", owner)
        return Handle(os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC), where)
    except OSError as exc:
        raise FailedPrecondition(f"cannot mark {where}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def remove_created(parent: Handle, name: str, owner: str) -> bool:
    """Remove ``name`` from ``parent`` if it is a file or an empty directory that ``owner``
    created (its marker says so) and nothing is mounted on it; True when removed.

    Anything else stays: False for something that is not ``owner``'s, FailedPrecondition
    for ``owner``'s directory that is not empty (never removed recursively)."""
    child = lookup(parent, name)
    if child is None:
        return False
    with child:
        if is_mountpoint(parent, child) or marker(child) != owner:
            return False
        st = child.stat()
        try:
            # the name must still be the object checked above (same inode), not a newcomer
            now = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return False
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent.fd)
            else:
                os.unlink(name, dir_fd=parent.fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FailedPrecondition(f"cannot remove {parent.path / name}: {exc.strerror or exc}") from exc
    return True


def same_object(a: Handle, b: Handle) -> bool:
    """One inode (a bind shows its source's inode at the target)."""
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def open_trusted(path: Path, *, directory: bool | None = None) -> Handle:
    """A path the driver itself chose (a staging mount it made, a device node, a volume's
    directory): ordinary resolution, but the last component is never a symlink."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        handle = Handle(os.open(path, flags), Path(path))
    except OSError as exc:
        raise FailedPrecondition(f"cannot open {path}: {exc.strerror or exc}") from exc
    if directory is False and stat.S_ISDIR(handle.stat().st_mode):
        handle.close()
        raise FailedPrecondition(f"{path} is a directory")
    return handle
