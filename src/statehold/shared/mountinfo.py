"""Deprecated forwarder: the mount table's lookups live in ``statehold.engine.mounts``.

Use ``statehold.engine.mounts`` (``mounts()``, ``mount_at(target, entries=None)``,
``mount_of(path, entries=None)``, ``bind``, ``unmount``). This module keeps the old
entries-first ``mount_at`` only for code written against it before the toolkit moved, and
holds no logic of its own; delete it once nothing imports it.
"""

from __future__ import annotations

from pathlib import Path

from statehold.engine import mounts as _toolkit
from statehold.engine.mounts import Mount


def read_mounts() -> list[Mount]:
    return _toolkit.mounts()


def mount_at(entries: list[Mount], mountpoint: Path | str) -> Mount | None:
    return _toolkit.mount_at(mountpoint, entries)
