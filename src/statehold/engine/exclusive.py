"""What a snapshot (or a volume) holds alone, and what it shares: what deleting it frees.

Snapshots and clones are reflinks: a snapshot and its volume point at the same blocks
until one of them is overwritten, when the writer gets new blocks (copy on write) and the
old ones stay with the snapshot alone. ``FIEMAP`` marks each extent of a file that some
other file also references ``FIEMAP_EXTENT_SHARED``; the extents without the flag are
referenced by this file only, so deleting the file gives exactly those back to the pool.

* **exclusive**: bytes only this file references; deleting it frees them;
* **shared**: bytes some other file (the volume, another snapshot, a clone) references
  too; deleting this file frees none of them. A block shared only between two snapshots
  counts as shared in both: it is freed when the second of them goes.

XFS reports sharing block by block (it splits a mapping where sharing starts or stops),
so the numbers are exact there. btrfs reports it per extent: an extent part of which was
overwritten stays whole on disk (and counted here) until nothing references any of it, so
on btrfs the exclusive figure can be short of what a deletion frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from statehold.engine.fiemap import RAW_FLAGS, ExtentFlag, FiemapUnsupported, raw_extents
from statehold.errors import FailedPrecondition

_LENGTH = 2


@dataclass(frozen=True, slots=True)
class SpaceUse:
    """Bytes of the pool one file references, split by whether anything else does too."""

    allocated: int      # every byte the file references (holes excluded)
    exclusive: int      # referenced by this file only: what deleting it frees
    shared: int         # referenced by another file too (volume, snapshot, clone)
    extents: int        # how many extents the file has (fragmentation, for the curious)


def space_use(path: Path) -> SpaceUse:
    """Split ``path``'s extents into exclusive and shared (one ``FIEMAP`` walk, O(extents)).

    NotFound if the file is missing; FailedPrecondition when the pool filesystem has no
    ``FIEMAP`` (every pool filesystem has it; a directory pool on another one may not)."""
    try:
        extents = raw_extents(path, sync=True)  # a missing file: NotFound
    except FiemapUnsupported as exc:
        raise FailedPrecondition(f"{path}: the pool filesystem does not report extents "
                                 "(FIEMAP), so shared bytes cannot be told apart") from exc
    total = shared = 0
    for ext in extents:
        length = ext[_LENGTH]
        total += length
        if ext[RAW_FLAGS] & ExtentFlag.SHARED:
            shared += length
    return SpaceUse(allocated=total, exclusive=total - shared, shared=shared,
                    extents=len(extents))
