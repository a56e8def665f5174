"""The mount toolkit: what is mounted where (``/proc/self/mountinfo``), bind and unmount.

Every area (engine, CSI node service, shared mode) reads the mount table and makes bind
mounts through here, under one set of rules:

* **The kernel's table is the truth.** Idempotency is decided from mountinfo, never from
  memory or a state file, so a restarted process answers a retried call correctly.
* **Idempotency** (:func:`bound`): binding the same source at the same target with the same
  read-only flag again is a no-op; a target that holds anything else — another source, or
  the same source with the other read-only flag — is :class:`AlreadyExists` (the CSI spec's
  answer for "published, but incompatible"). Unmounting what is not mounted is a no-op.
* **Errors**: a refusal by ``mount``/``umount`` (or a timeout) is :class:`FailedPrecondition`
  carrying the tool's stderr; no :class:`CommandError` leaves this module.

Paths the driver chose itself are used as strings (:func:`bind`, :func:`unmount`). Paths an
untrusted caller named (CSI targets) are opened first (:mod:`statehold.engine.safepath`) and
handled through their descriptors under the same rules (:func:`bound_at`, :func:`bind_at`,
:func:`unmount_at`): what was checked is what is mounted or unmounted. Whose a mount is
comes from the kernel, never from a source string a ``tmpfs`` can spoof:
:func:`loop_backing` reads the backing file of the loop device behind a mount.

Mount points in mountinfo escape space, tab, newline and backslash as octal (``\\040``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from statehold.engine import mountapi
from statehold.engine.safepath import Handle, is_mountpoint, same_object
from statehold.errors import AlreadyExists, CommandError, FailedPrecondition
from statehold.runner import run

MOUNTINFO = Path("/proc/self/mountinfo")
TIMEOUT = 120.0
"""Seconds one ``mount``/``umount`` may take (a hung network filesystem must not hang us)."""
MAX_STACK = 16
"""Mounts :func:`unmount` peels off one target (stacked by an earlier crash) before giving up."""

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo (proc(5)); the one parse every area uses."""

    source: str
    target: str                       # mount point
    fstype: str
    options: frozenset[str]           # per-mount options (rw/ro, nosuid, ...)
    mount_id: int = 0
    parent_id: int = 0
    device: str = ""                  # "major:minor" of the mounted filesystem
    root: str = "/"                   # path inside that filesystem that is mounted (binds)
    super_options: frozenset[str] = frozenset()  # per-superblock options (prjquota, ...)

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    @property
    def all_options(self) -> frozenset[str]:
        return self.options | self.super_options


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in kernel order (later entries stack on earlier ones); malformed lines, which
    the kernel never writes, are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if not sep or len(lf) < 6 or len(rf) < 2:
            continue
        try:
            mount_id, parent_id = int(lf[0]), int(lf[1])
        except ValueError:
            continue
        mounts.append(
            Mount(
                source=_unescape(rf[1]),
                target=_unescape(lf[4]),
                fstype=rf[0],
                options=frozenset(lf[5].split(",")),
                mount_id=mount_id,
                parent_id=parent_id,
                device=lf[2],
                root=_unescape(lf[3]),
                super_options=frozenset(rf[2].split(",")) if len(rf) > 2 else frozenset(),
            )
        )
    return mounts


def mounts() -> list[Mount]:
    """The mount table now; pass it to the lookups below to answer several from one read."""
    return parse_mountinfo(MOUNTINFO.read_text())


# -- lookups ----------------------------------------------------------------------------------
def mount_at(target: Path | str, entries: list[Mount] | None = None) -> Mount | None:
    """The top-most mount exactly at ``target`` (the one a process sees there), or None."""
    wanted = os.path.normpath(str(target))
    found = None
    for m in mounts() if entries is None else entries:
        if m.target == wanted:
            found = m
    return found


def mount_of(path: Path | str, entries: list[Mount] | None = None) -> Mount | None:
    """The mount that holds ``path``: longest mount-point prefix, top-most when stacked.
    String comparison: pass a resolved path when symlinks may be involved."""
    wanted = os.path.normpath(str(path))
    best: Mount | None = None
    for m in mounts() if entries is None else entries:
        if is_under(wanted, m.target) and (best is None or len(m.target) >= len(best.target)):
            best = m
    return best


def targets_of(device: str) -> list[str]:
    """Mount targets whose source is ``device`` (e.g. ``/dev/loop3``)."""
    return [m.target for m in mounts() if m.source == device]


def writable_targets(device: str) -> list[str]:
    """Read-write mounts of ``device``: a read-only mount has nothing to flush or freeze."""
    return [m.target for m in mounts() if m.source == device and "rw" in m.options]


def is_under(path: str, root: Path | str) -> bool:
    """True when ``path`` is ``root`` or inside it (string path comparison, no symlinks)."""
    r = str(root).rstrip("/")
    return path == r or path.startswith(r + "/")


# -- bind and unmount -------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    """One inode: a bind shows its source's inode at the target (directory or device node)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:  # e.g. ENOTCONN from a dead FUSE mount: not what was asked for
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def bound(source: Path | str, target: Path | str, *, readonly: bool,
          entries: list[Mount] | None = None) -> bool:
    """The one idempotency rule for binds. True: ``source`` is already bound at ``target``
    with this read-only flag (nothing to do). False: nothing is mounted at ``target``.
    AlreadyExists: something else is, or the same source with the other read-only flag."""
    current = mount_at(target, entries)
    if current is None:
        return False
    if not _same_file(Path(source), Path(target)):
        raise AlreadyExists(f"{target} already holds another mount ({current.source}), not {source}")
    if current.readonly != readonly:
        raise AlreadyExists(f"{target} already has {source} bound with readonly={current.readonly}")
    return True


def bind(source: Path | str, target: Path | str, *, readonly: bool = False) -> None:
    """Bind-mount ``source`` (a directory, or a file such as a device node) onto ``target``.

    Idempotent by :func:`bound`. A missing target is created to match the source (a
    directory, or an empty 0600 file) and removed again if the bind fails. Read-only takes
    a second step, because the kernel ignores MS_RDONLY on the initial MS_BIND: if that
    remount fails the bind is undone, so a read-write mount is never left behind."""
    source, target = Path(source), Path(target)
    if bound(source, target, readonly=readonly):
        return
    if not source.exists():
        raise FailedPrecondition(f"cannot bind {source}: it does not exist")
    created = _make_target(target, directory=source.is_dir())
    try:
        _tool(["mount", "--bind", str(source), str(target)], f"bind mount of {source} on {target}")
        if readonly:
            try:
                _tool(["mount", "-o", "remount,bind,ro", str(target)], f"read-only remount of {target}")
            except FailedPrecondition:
                with contextlib.suppress(FailedPrecondition):
                    _tool(["umount", str(target)], f"unmount of {target}")
                raise
    except BaseException:
        if created and mount_at(target) is None:
            _remove(target)
        raise


def unmount(target: Path | str, *, remove_dir: bool = False) -> None:
    """Unmount every mount stacked exactly at ``target``; nothing mounted there is a no-op.

    ``remove_dir``: then remove ``target`` if it is an empty directory (best effort; a
    directory with files in it, or a file, stays)."""
    target = Path(target)
    for _ in range(MAX_STACK):
        top = mount_at(target)
        if top is None:
            break
        try:
            run(["umount", str(target)], timeout=TIMEOUT)
        except CommandError as exc:
            after = mount_at(target)
            if after is None or after.mount_id != top.mount_id:
                continue  # unmounted meanwhile by someone else: the table is the truth
            raise FailedPrecondition(f"cannot unmount {target}: {exc.stderr}") from exc
    else:
        if mount_at(target) is not None:
            raise FailedPrecondition(f"{target} is still mounted after {MAX_STACK} unmounts")
    if remove_dir:
        with contextlib.suppress(OSError):
            target.rmdir()


def _make_target(target: Path, *, directory: bool) -> bool:
    """Create the mount point when missing; True when this call created it."""
    if os.path.lexists(target):
        return False
    try:
        if directory:
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o600, exist_ok=False)
    except FileExistsError:
        return False  # created meanwhile by someone else: theirs, not ours to remove
    except OSError as exc:
        raise FailedPrecondition(f"cannot create mount point {target}: {exc}") from exc
    return True


def _remove(target: Path) -> None:
    with contextlib.suppress(OSError):
        if target.is_dir():
            target.rmdir()
        else:
            target.unlink()


def _tool(argv: list[str], what: str) -> None:
    try:
        run(argv, timeout=TIMEOUT)
    except CommandError as exc:
        raise FailedPrecondition(f"{what} failed: {exc.stderr}") from exc


# -- descriptors: paths an untrusted caller named (see safepath) -------------------------------
SYS_DEV_BLOCK = Path("/sys/dev/block")


def entry_of(handle: Handle, entries: list[Mount] | None = None) -> Mount | None:
    """The mount ``handle`` is reached through, by the kernel's mount id (not by path)."""
    wanted = handle.mount_id
    for m in mounts() if entries is None else entries:
        if m.mount_id == wanted:
            return m
    return None


def loop_backing(device: int | str) -> str | None:
    """The backing file of a loop device given as a ``dev_t`` or ``"major:minor"``; None for
    anything that is not a bound loop device. (An unlinked backing file keeps the kernel's
    `` (deleted)`` suffix, so it never equals a live path.)"""
    majmin = f"{os.major(device)}:{os.minor(device)}" if isinstance(device, int) else device
    try:
        text = (SYS_DEV_BLOCK / majmin / "loop" / "backing_file").read_text().rstrip("\n")
    except OSError:
        return None
    return text or None


def shows_device(handle: Handle) -> bool:
    """Is ``handle`` a device node (a block publication)? A filesystem shut down (a fenced
    copy's seal, engine/readonly.py) answers even ``fstat`` of its root with EIO: it is a
    filesystem, not a device node, and must still be recognised to be unmounted."""
    try:
        return stat.S_ISBLK(handle.stat().st_mode)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return False
        raise


def backing_of(handle: Handle, entry: Mount) -> str | None:
    """The loop backing file of what ``handle`` (the root of mount ``entry``) shows: a
    device node bound there (a block publication), or the filesystem mounted there.

    The filesystem's device comes from the kernel (mountinfo's ``major:minor``); btrfs
    reports an anonymous device there, so for btrfs the source device is used — its mount
    opened that very device, so unlike a ``tmpfs`` it cannot name another one."""
    if shows_device(handle):
        return loop_backing(handle.stat().st_rdev)
    found = loop_backing(entry.device)
    if found is None and entry.fstype == "btrfs" and entry.source.startswith("/dev/"):
        try:
            found = loop_backing(os.stat(entry.source).st_rdev)
        except OSError:
            return None
    return found


def bound_at(source: Handle, target: Handle | None, parent: Handle, *,
             readonly: bool | None) -> bool:
    """:func:`bound` on descriptors. True: ``target`` is a mount point showing ``source``'s
    object with this read-only flag (``None``: any). False: nothing is mounted there.
    AlreadyExists: something else is, or the same object with the other flag."""
    if target is None or not is_mountpoint(parent, target):
        return False
    current = entry_of(target)
    if current is None or not same_object(source, target):
        held = current.source if current is not None else "another mount"
        raise AlreadyExists(f"{target.path} already holds another mount ({held}), not {source.path}")
    if readonly is not None and current.readonly != readonly:
        raise AlreadyExists(f"{target.path} already has {source.path} bound with readonly={current.readonly}")
    return True


def bind_at(source: Handle, target: Handle, *, readonly: bool | None = None) -> None:
    """Bind exactly the object ``source`` holds onto exactly the object ``target`` holds.

    A detached copy of ``source``'s mount is made (``open_tree``), made read-only while
    still detached when asked (so a read-write mount is never visible, unlike ``mount
    --bind`` + remount), then attached onto the target descriptor (``move_mount``).
    ``readonly=None`` keeps ``source``'s own flags. Callers check :func:`bound_at` first.
    Errors are FailedPrecondition."""
    try:
        tree = mountapi.clone_tree(source.fd)
    except OSError as exc:
        raise FailedPrecondition(f"bind mount of {source.path} on {target.path} failed: {exc}") from exc
    try:
        if readonly:
            mountapi.set_readonly(tree)
        mountapi.attach(tree, target.fd)
    except OSError as exc:
        raise FailedPrecondition(f"bind mount of {source.path} on {target.path} failed: {exc}") from exc
    finally:
        os.close(tree)


def unmount_at(parent: Handle, name: str, expected: Mount) -> None:
    """Unmount the top-most mount at ``name`` in directory ``parent``: the mount
    ``expected`` the caller identified (and closed its handle of: an open descriptor keeps a
    mount busy). Never lazy: a busy mount is FailedPrecondition and stays. The name is looked
    up in the very directory checked (``/proc/self/fd/N/name``, not followed if a symlink).
    A mount that is already gone is a no-op, as for :func:`unmount`."""
    try:
        mountapi.umount(f"{parent.proc}/{name}")
    except OSError as exc:
        table = mounts()
        if not any(m.mount_id == expected.mount_id for m in table):
            return  # unmounted meanwhile by someone else: the table is the truth
        if exc.errno == errno.EBUSY:
            raise FailedPrecondition(f"cannot unmount {parent.path / name}: it is busy (in use)") from exc
        raise FailedPrecondition(f"cannot unmount {parent.path / name}: {exc}") from exc
    if any(m.mount_id == expected.mount_id for m in mounts()):
        # another mount was stacked at the name between the check and the unmount, and went
        # instead: only a root process can do that, and it is reported, not papered over
        raise FailedPrecondition(f"the mounts at {parent.path / name} changed while unmounting; "
                                 f"{expected.source} is still mounted there")
