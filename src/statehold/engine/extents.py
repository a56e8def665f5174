"""Changed-extent diff between two snapshots of one lineage, and a file's data ranges.

Two reflinked snapshots share every extent that was not written between them: copy on
write gives a written block a new physical address. So a range where both files map to
the same physical bytes is unchanged, a range that is a hole in both reads as zeros in
both, and everything else *may* differ. The result may over-report (a block rewritten
with the same bytes, an extent whose address the kernel will not vouch for) but never
misses a change. Backup and replication read only these ranges.

Rules, applied per byte of ``new`` (bytes of ``old`` past ``new``'s size are not
reported: the consumer learns the new size from the file itself):

* both map to the same physical address with the same content flags -> unchanged;
* a hole in both -> unchanged (a byte past ``old``'s size counts as a hole in ``old``);
* an extent flagged unknown, delalloc, encoded, encrypted, inline or tail-packed
  -> changed (its ``fe_physical`` does not identify the bytes);
* anything else (other address, data vs hole, unwritten vs written) -> changed.

Ranges are sorted, merged, start on a multiple of ``block`` and end on one too, except a
last range that ends at ``new``'s size when that size is not block aligned.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from statehold.engine.fiemap import (
    INFORMATIONAL,
    UNTRUSTED,
    Extent,
    FiemapUnsupported,
    file_extents,
)
from statehold.engine.files import open_readonly
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound

Range = tuple[int, int]
"""(offset, length) in bytes."""


def data_ranges(path: Path) -> list[Range]:
    """The (offset, length) ranges of ``path`` that hold data, via SEEK_DATA/SEEK_HOLE.

    Holes read as zeros and need not be copied; the filesystem may report a written range
    of zeros as data, never the reverse.
    """
    fd = open_readonly(path)
    try:
        size = os.fstat(fd).st_size
        out: list[Range] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            end = min(end, size)
            if end > start:
                out.append((start, end - start))
            pos = end
        return merge(out)
    except OSError as exc:
        raise FailedPrecondition(f"{path}: cannot seek data: {exc.strerror}") from exc
    finally:
        os.close(fd)


def changed_ranges(old: Path, new: Path, *, block: int = 4096) -> list[Range]:
    """Byte ranges of ``new`` that may differ from ``old`` (see the module docstring)."""
    check_block(block)
    try:
        old_size = os.stat(old).st_size
        new_size = os.stat(new).st_size
    except FileNotFoundError as exc:
        raise NotFound(f"{exc.filename}: no such file") from exc
    try:
        old_map = file_extents(old)
        new_map = file_extents(new)
    except FiemapUnsupported:
        # No mapping to compare: every byte with data in either file may differ.
        raw = [r for r in data_ranges(old) + data_ranges(new) if r[0] < new_size]
        return align(raw, block, new_size)
    raw = compare_maps(old_map, old_size, new_map, new_size)
    return align(raw, block, new_size)


def check_block(block: int) -> None:
    if block <= 0 or block & (block - 1):
        raise InvalidArgument(f"block must be a positive power of two, got {block}")


_Piece = tuple[int, int] | None
"""What one byte range maps to: (physical address at the range start, content flags),
or None for a hole."""


def _clip(extents: Iterable[Extent], size: int) -> list[Extent]:
    """Extents cut at ``size``: what lies past the end of a file is not its content."""
    out = []
    for e in extents:
        if e.logical >= size or e.length <= 0:
            continue
        if e.end > size:
            e = Extent(e.logical, e.physical, size - e.logical, e.flags)
        out.append(e)
    out.sort(key=lambda e: e.logical)
    return out


def _piece_at(extents: Sequence[Extent], idx: int, pos: int) -> tuple[int, _Piece]:
    """Advance ``idx`` past extents ending at or before ``pos``; return what maps ``pos``."""
    while idx < len(extents) and extents[idx].end <= pos:
        idx += 1
    if idx < len(extents) and extents[idx].logical <= pos:
        e = extents[idx]
        return idx, (e.physical + (pos - e.logical), int(e.flags & ~INFORMATIONAL))
    return idx, None


def _same(a: _Piece, b: _Piece) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a[1] & UNTRUSTED or b[1] & UNTRUSTED:
        return False
    return a == b


def compare_maps(
    old: Iterable[Extent], old_size: int, new: Iterable[Extent], new_size: int
) -> list[Range]:
    """Unaligned ranges of ``new`` whose mapping differs from ``old``'s. Pure.

    A sweep over every extent boundary of both files: between two consecutive boundaries
    each file is either a hole or inside one extent, so comparing the mapping at the start
    of the segment decides the whole segment (both addresses advance one-for-one).
    """
    old_ext, new_ext = _clip(old, old_size), _clip(new, new_size)
    cuts = {0, new_size}
    for e in old_ext + new_ext:
        cuts.add(min(e.logical, new_size))
        cuts.add(min(e.end, new_size))
    points = sorted(cuts)
    out: list[Range] = []
    io = inew = 0
    for a, b in itertools.pairwise(points):
        io, po = _piece_at(old_ext, io, a)
        inew, pn = _piece_at(new_ext, inew, a)
        if not _same(po, pn):
            out.append((a, b - a))
    return merge(out)


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort and merge overlapping or touching ranges; drop empty ones. Pure."""
    out: list[list[int]] = []
    for off, length in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(o, n) for o, n in out]


def align(ranges: Iterable[Range], block: int, limit: int) -> list[Range]:
    """Widen each range to ``block`` boundaries, clamp at ``limit``, then merge. Pure."""
    check_block(block)
    widened = []
    for off, length in ranges:
        if length <= 0 or off >= limit:
            continue
        start = off - off % block
        end = min(-(-(off + length) // block) * block, limit)
        widened.append((start, end - start))
    return merge(widened)


def total(ranges: Iterable[Range]) -> int:
    """Bytes covered by already merged ranges."""
    return sum(n for _, n in ranges)
