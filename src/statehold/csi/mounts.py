"""What the node service does with the paths a CO names, for every backend: open them
safely, take down only the volume's own mounts, remove only what it created.

The rules (docs/csi.md, *What the node service touches*):

* A staging or target path is opened beneath its allowed root (``engine.safepath``): never
  through a symlink, never across a mount point below the root. What was checked is what is
  mounted on or unmounted, through the descriptors.
* An unmount takes down a mount only when the backend's ``owned`` test says it is this
  volume's (loop backing file, or the volume directory's inode — from the kernel, never from
  the volume being attached now, so it holds after a reboot). Mounts stacked on a target are
  peeled from the top while they are the volume's; the first that is not stops the call with
  FAILED_PRECONDITION, and it and everything under it stay.
* Only a file or directory the driver created (marked with ``safepath.MARKER`` naming the
  volume) is removed, and a directory only when empty. Anything else at a target after its
  mounts are gone — a file, a directory with files, a symlink — is FAILED_PRECONDITION and
  is left exactly as it is; an empty directory the CO made is left and is not an error.

The read-only flag of a block volume's device also lives here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from statehold.engine import mounts, safepath
from statehold.engine.mounts import MAX_STACK, Mount
from statehold.engine.safepath import Handle
from statehold.errors import AlreadyExists, FailedPrecondition
from statehold.runner import run

Owned = Callable[[Handle, Mount], bool]
"""Is the mount whose root this handle is (and its mountinfo line) the volume's own?"""


def peel(parent: Handle, name: str, owned: Owned, volume_id: str) -> int:
    """Unmount every mount stacked at ``name`` in ``parent`` that is the volume's, top first;
    the number unmounted. FailedPrecondition at the first that is not (nothing more is
    touched)."""
    for done in range(MAX_STACK):
        child = safepath.lookup(parent, name)
        if child is None:
            return done
        with child:
            if not safepath.is_mountpoint(parent, child):
                return done
            entry = mounts.entry_of(child)
            if entry is None or not owned(child, entry):
                held = f"{entry.source} ({entry.fstype})" if entry is not None else "another mount"
                raise FailedPrecondition(
                    f"{parent.path / name} holds {held}, which is not volume {volume_id}; "
                    "it is left as it is")
        mounts.unmount_at(parent, name, entry)
    raise FailedPrecondition(f"{parent.path / name} is still mounted after {MAX_STACK} unmounts")


def _empty_dir(handle: Handle) -> bool:
    try:
        with os.scandir(handle.proc) as it:
            return next(it, None) is None
    except OSError:
        return False


def clear_target(parent: Handle, name: str, volume_id: str) -> None:
    """After the volume's mounts are gone: remove what the driver created at ``name`` for
    this volume; leave an empty directory the CO made; refuse anything else."""
    if safepath.remove_created(parent, name, volume_id):
        return
    child = safepath.lookup(parent, name)
    if child is None:
        return
    with child:
        if safepath.is_mountpoint(parent, child):
            raise FailedPrecondition(f"{parent.path / name} is still a mount point")
        mode = child.stat().st_mode
        if stat.S_ISDIR(mode) and _empty_dir(child):
            return  # the CO's own (empty) directory: kubelet removes it
        kind = "directory that is not empty" if stat.S_ISDIR(mode) else (
            "regular file" if stat.S_ISREG(mode) else "special file")
        raise FailedPrecondition(
            f"{parent.path / name} is a {kind} that the driver did not create for volume "
            f"{volume_id}; it is left as it is")


def unpublish(target: Path, roots: Sequence[Path], volume_id: str, owned: Owned) -> None:
    """NodeUnpublishVolume for any backend: peel the volume's mounts off ``target``, then
    :func:`clear_target`. Nothing at all there (or not even its parent) is success."""
    located = safepath.locate(target, roots)
    parent = safepath.open_parent(located)
    if parent is None:
        return
    with parent:
        peel(parent, located.name, owned, volume_id)
        clear_target(parent, located.name, volume_id)


@contextlib.contextmanager
def target(path: Path, roots: Sequence[Path]) -> Iterator[tuple[Handle, str, Handle | None]]:
    """``(parent, name, what is there now)`` of a publish target, its missing parent
    directories created (they are the CO's). Handles are closed after the block."""
    located = safepath.locate(path, roots)
    parent = safepath.open_parent(located, create=True)
    assert parent is not None  # created when missing
    with parent:
        current = safepath.lookup(parent, located.name)
        try:
            yield parent, located.name, current
        finally:
            if current is not None:
                current.close()


def bind_onto(source: Handle, parent: Handle, name: str, current: Handle | None, volume_id: str, *,
              readonly: bool | None, file: bool = False) -> None:
    """Bind ``source`` at ``name``: onto what is there (a directory, or a regular file for
    ``file``), or onto a new one the driver creates and marks, removed again if the bind
    fails. Callers have checked :func:`statehold.engine.mounts.bound_at` first."""
    created: Handle | None = None
    if current is None:
        make = safepath.make_file if file else safepath.make_directory
        current = created = make(parent, name, volume_id)
    else:
        mode = current.stat().st_mode
        if file and stat.S_ISDIR(mode):
            raise AlreadyExists(f"{parent.path / name} is a directory; a block target must be a file")
        if not file and not stat.S_ISDIR(mode):
            raise FailedPrecondition(f"{parent.path / name} is not a directory; it is left as it is")
        if file and not stat.S_ISREG(mode):
            raise FailedPrecondition(f"{parent.path / name} is not a regular file; it is left as it is")
    try:
        mounts.bind_at(source, current, readonly=readonly)
    except BaseException:
        if created is not None:
            created.close()
            with contextlib.suppress(FailedPrecondition):
                safepath.remove_created(parent, name, volume_id)
        raise
    finally:
        if created is not None:
            created.close()


def device_readonly(device: str) -> bool:
    return run(["blockdev", "--getro", device]).stdout.strip() == "1"


def set_device_readonly(device: str, readonly: bool) -> None:
    """Read-only at the block layer: a ro *mount* does not stop writes through a device
    node (the kernel checks MNT_READONLY for files and directories only)."""
    run(["blockdev", "--setro" if readonly else "--setrw", device])
