"""What is mounted where: small queries on ``/proc/self/mountinfo`` (parsed by the engine).

The kernel's table is the truth about mounts (a state file can be stale after a crash), so
idempotency checks ("is the share already mounted here?") read it rather than remember.
"""

from __future__ import annotations

import os
from pathlib import Path

from statehold.engine.mounts import Mount, mounts


def read_mounts() -> list[Mount]:
    return mounts()


def mount_at(entries: list[Mount], mountpoint: Path | str) -> Mount | None:
    """The top-most mount whose mount point is exactly ``mountpoint``."""
    target = os.path.normpath(str(mountpoint))
    found = None
    for entry in entries:
        if entry.target == target:
            found = entry
    return found


def mount_of(entries: list[Mount], path: Path | str) -> Mount | None:
    """The mount that holds ``path``: longest mount-point prefix, top-most when stacked."""
    target = os.path.normpath(str(path))
    best: Mount | None = None
    for entry in entries:
        mp = entry.target
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.target)):
            best = entry
    return best


def is_mountpoint(path: Path | str) -> bool:
    return mount_at(read_mounts(), path) is not None
