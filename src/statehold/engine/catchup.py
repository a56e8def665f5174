"""A reflink in two steps: the whole file early, then only what changed, quickly.

``FICLONE`` costs time proportional to the file's extent count: seconds for a volume that
lived under random writes with snapshots kept (issue 14). A group snapshot must hold its
members frozen while it copies them, so it does the expensive part first, while the
volumes still run: :func:`preclone` reflinks the whole file and remembers the copy's
extent map. Once the volume is frozen, :func:`catch_up` maps the volume again and shares
again only the ranges whose mapping differs (``FICLONERANGE``): a few hundred ranges for
the writes of a few seconds, whatever the history.

Why a mapping comparison is enough: a block shared by two files is never rewritten in
place (copy on write gives the writer a new block), so a range both files map to the same
physical blocks holds the same bytes. :func:`changed` compares whole extents: one the
kernel reports identically in both maps (logical, physical, length and content flags) is
unchanged; the range of every other extent, on either side, may differ. It may over-report
(the kernel cut an unchanged extent differently), never miss. Extents whose address the
kernel does not vouch for (``fiemap.UNTRUSTED``) always count as changed.

The catch-up is only right for a source nobody writes meanwhile: a frozen filesystem's
volume. A volume still being written (a block volume) must be copied by one ``FICLONE``,
the only atomic copy of a whole file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from statehold.engine import extents
from statehold.engine.ficlone import reflink, reflink_range
from statehold.engine.fiemap import (
    INFORMATIONAL,
    RAW_FLAGS,
    UNTRUSTED,
    FiemapUnsupported,
    Raw,
    raw_extents,
)

_CONTENT = ~int(INFORMATIONAL)
_UNTRUSTED = int(UNTRUSTED)


@dataclass(frozen=True, slots=True)
class Index:
    """A file's extent map, ready to be compared at once (built outside the window)."""

    trusted: frozenset[Raw]                 # extents whose address identifies the bytes
    untrusted: tuple[extents.Range, ...]    # the ranges of the others: always "changed"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A whole-file copy made before the freeze, and what it mapped to."""

    mapping: Index | None        # None: FIEMAP unsupported, catch_up copies the whole file
    size: int
    block: int                   # the filesystem block: FICLONERANGE's unit


def _key(e: Raw) -> tuple[int, int, int, int]:
    return e[0], e[1], e[2], e[RAW_FLAGS] & _CONTENT


def index(mapping: Sequence[Raw]) -> Index:
    """Pure."""
    return Index(frozenset(e for e in mapping if not e[RAW_FLAGS] & _UNTRUSTED),
                 tuple((e[0], e[2]) for e in mapping if e[RAW_FLAGS] & _UNTRUSTED))


def changed(before: Index, now: Sequence[Raw], size: int, block: int) -> list[extents.Range]:
    """Block-aligned ranges (within ``size``) whose mapping may differ from ``before``'s.
    Pure. Most extents are reported identically in both maps: set differences (at C
    speed) set them aside, and only the few left are compared on their content flags."""
    has = set(now)
    gone, new = before.trusted - has, has - before.trusted
    gone_keys = {_key(e) for e in gone}
    new_keys = {_key(e) for e in new if not e[RAW_FLAGS] & _UNTRUSTED}
    raw = [(e[0], e[2]) for e in new if e[RAW_FLAGS] & _UNTRUSTED or _key(e) not in gone_keys]
    raw += [(e[0], e[2]) for e in gone if _key(e) not in new_keys]
    raw += before.untrusted
    return extents.align(raw, block, size)


def preclone(src: Path, dst: Path, *, mode: int) -> Prepared:
    """Reflink all of ``src`` to ``dst`` (slow on a fragmented file) and map the copy."""
    reflink(src, dst, mode=mode)
    size = dst.stat().st_size
    block = os.statvfs(dst).f_frsize or 4096
    try:
        return Prepared(index(raw_extents(dst, sync=False)), size, block)
    except FiemapUnsupported:
        return Prepared(None, size, block)


def catch_up(src: Path, dst: Path, before: Prepared, *, mode: int) -> int:
    """Make ``dst`` equal to ``src`` again (which nobody writes now); the ranges shared."""
    if before.mapping is None:
        reflink(src, dst, mode=mode)
        return 1
    size = src.stat().st_size
    ranges = changed(before.mapping, raw_extents(src, sync=True), size, before.block)
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if size != before.size:
                os.ftruncate(dst_fd, size)
            for offset, length in ranges:
                reflink_range(src_fd, dst_fd, offset, length)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return len(ranges)
