"""What is mounted where (``/proc/self/mountinfo``), and bind mounts for NodePublishVolume.

The node service decides idempotency from the kernel's own table, not from memory: after a
crash or restart the table is the truth. Parsing is a pure function tested on captured
text; the few mount/umount calls go through the one runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from statehold.runner import run

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str                   # "major:minor" of the mounted filesystem
    root: str                     # path inside that filesystem that is mounted (binds)
    target: Path                  # mount point
    options: frozenset[str]       # per-mount options (ro/rw, nosuid, ...)
    fstype: str
    source: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text; malformed lines are skipped (the kernel never writes them)."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    root=_unescape(fields[3]),
                    target=Path(_unescape(fields[4])),
                    options=frozenset(fields[5].split(",")),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def table() -> list[MountEntry]:
    return parse_mountinfo(MOUNTINFO.read_text())


def at(target: Path, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """The top-most mount at ``target`` (the one a process sees), or None."""
    entries = table() if entries is None else entries
    found = [e for e in entries if e.target == target]
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
