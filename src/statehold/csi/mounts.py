"""What is mounted where (``/proc/self/mountinfo``), and bind mounts for NodePublishVolume.

The node service decides idempotency from the kernel's own table, not from memory: after a
crash or restart the table is the truth. The table is parsed by ``statehold.engine.mounts``;
the few mount/umount calls go through the one runner.
"""

from __future__ import annotations

import os
from pathlib import Path

from statehold.engine.mounts import Mount, mounts
from statehold.runner import run


def table() -> list[Mount]:
    return mounts()


def at(target: Path, entries: list[Mount] | None = None) -> Mount | None:
    """The top-most mount at ``target`` (the one a process sees), or None."""
    entries = table() if entries is None else entries
    found = [e for e in entries if e.target == str(target)]
    return found[-1] if found else None


def device_number(path: str | Path) -> str:
    """"major:minor" of a block device node, the form mountinfo uses."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def bind(source: Path | str, target: Path, *, readonly: bool) -> None:
    """Bind-mount ``source`` (a directory or a device node) onto ``target``.

    A read-only bind needs a second, remount step: the kernel ignores MS_RDONLY on the
    initial MS_BIND."""
    run(["mount", "--bind", str(source), str(target)])
    if readonly:
        try:
            run(["mount", "-o", "remount,bind,ro", str(target)])
        except Exception:
            run(["umount", str(target)], check=False)
            raise


def unmount(target: Path) -> None:
    run(["umount", str(target)])


def remove_target(target: Path) -> None:
    """Remove the file or empty directory NodePublishVolume created (never recursive)."""
    try:
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()
    except FileNotFoundError:
        pass


def device_readonly(device: str) -> bool:
    return run(["blockdev", "--getro", device]).stdout.strip() == "1"


def set_device_readonly(device: str, readonly: bool) -> None:
    """Read-only at the block layer: a ro *mount* does not stop writes through a device
    node (the kernel checks MNT_READONLY for files and directories only)."""
    run(["blockdev", "--setro" if readonly else "--setrw", device])
