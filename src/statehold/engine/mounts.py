"""What is mounted where, read from ``/proc/self/mountinfo`` (a pure parser plus a reader).

Mount points in mountinfo escape space, tab, newline and backslash as octal (``\\040``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

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
    return parse_mountinfo(MOUNTINFO.read_text())


def targets_of(device: str) -> list[str]:
    """Mount targets whose source is ``device`` (e.g. ``/dev/loop3``)."""
    return [m.target for m in mounts() if m.source == device]


def writable_targets(device: str) -> list[str]:
    """Read-write mounts of ``device``: a read-only mount has nothing to flush or freeze."""
    return [m.target for m in mounts() if m.source == device and "rw" in m.options]


def mount_at(target: Path | str) -> Mount | None:
    """The top-most mount exactly at ``target``, or None."""
    wanted = str(target)
    found = None
    for m in mounts():
        if m.target == wanted:
            found = m
    return found


def is_under(path: str, root: Path | str) -> bool:
    """True when ``path`` is ``root`` or inside it (string path comparison, no symlinks)."""
    r = str(root).rstrip("/")
    return path == r or path.startswith(r + "/")
