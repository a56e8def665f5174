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
    source: str
    target: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text into mounts, in kernel order (parents before children)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 6 or len(rf) < 2:
            continue
        mounts.append(
            Mount(
                source=_unescape(rf[1]),
                target=_unescape(lf[4]),
                fstype=rf[0],
                options=lf[5],
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
    return [m.target for m in mounts() if m.source == device and "rw" in m.options.split(",")]


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
