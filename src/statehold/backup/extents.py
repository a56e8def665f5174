"""The one call site of the engine's extent functions (changed-extent diff, data ranges).

Backup code calls only these two names, so the engine's implementation can change (or be
swapped in tests) in one place.
"""

from __future__ import annotations

from pathlib import Path

from statehold.engine import extents as _engine


def changed_ranges(old: Path, new: Path) -> list[tuple[int, int]]:
    """Byte ranges of ``new`` that may differ from ``old`` (never misses a change)."""
    return _engine.changed_ranges(old, new)


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of ``path`` that hold data (SEEK_DATA/SEEK_HOLE): holes are skipped."""
    return _engine.data_ranges(path)


def chunks_touching(ranges: list[tuple[int, int]], chunk_size: int) -> set[int]:
    """Indices of the chunks that overlap any of ``ranges``."""
    out: set[int] = set()
    for off, length in ranges:
        if length <= 0:
            continue
        out.update(range(off // chunk_size, (off + length - 1) // chunk_size + 1))
    return out
