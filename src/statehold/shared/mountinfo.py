"""What is mounted where: a pure parser of ``/proc/self/mountinfo`` and small queries on it.

The kernel's table is the truth about mounts (a state file can be stale after a crash), so
idempotency checks ("is the share already mounted here?") read it rather than remember.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str           # major:minor
    root: str             # the path inside the filesystem that is mounted (bind mounts)
    mountpoint: str
    options: tuple[str, ...]        # per-mount options (rw, ro, noatime, ...)
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-superblock options (prjquota, ...)

    @property
    def all_options(self) -> frozenset[str]:
        return frozenset(self.options) | frozenset(self.super_options)


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Entries in kernel order (later entries stack on earlier ones); bad lines skipped."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        try:
            mount_id, parent_id = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        entries.append(
            MountEntry(
                mount_id=mount_id,
                parent_id=parent_id,
                device=parts[2],
                root=_unescape(parts[3]),
                mountpoint=_unescape(parts[4]),
                options=tuple(parts[5].split(",")),
                fstype=parts[sep + 1],
                source=_unescape(parts[sep + 2]),
                super_options=tuple(parts[sep + 3].split(",")) if len(parts) > sep + 3 else (),
            )
        )
    return entries


def read_mounts() -> list[MountEntry]:
    return parse_mountinfo(MOUNTINFO.read_text(encoding="utf-8", errors="replace"))


def mount_at(entries: list[MountEntry], mountpoint: Path | str) -> MountEntry | None:
    """The top-most mount whose mount point is exactly ``mountpoint``."""
    target = os.path.normpath(str(mountpoint))
    found = None
    for entry in entries:
        if entry.mountpoint == target:
            found = entry
    return found


def mount_of(entries: list[MountEntry], path: Path | str) -> MountEntry | None:
    """The mount that holds ``path``: longest mount-point prefix, top-most when stacked."""
    target = os.path.normpath(str(path))
    best: MountEntry | None = None
    for entry in entries:
        mp = entry.mountpoint
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = entry
    return best


def is_mountpoint(path: Path | str) -> bool:
    return mount_at(read_mounts(), path) is not None
