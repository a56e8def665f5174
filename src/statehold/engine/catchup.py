"""A reflink in two steps: the whole file early, then only what changed, quickly.

``FICLONE`` costs time proportional to the file's extent count: seconds for a volume that
lived under random writes with snapshots kept (issue 14). A group snapshot must hold its
members frozen while it copies them, so it does the expensive part first, while the
volumes still run: :func:`preclone` reflinks the whole file (in steps of a bounded number
of extents, so the volume's writers never wait long) and remembers the copy's extent map.
Once the volume is frozen, :func:`catch_up` maps the volume again and shares
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

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from statehold.engine import extents
from statehold.engine import freeze as freezing
from statehold.engine.ficlone import reflink, reflink_range
from statehold.engine.fiemap import (
    INFORMATIONAL,
    RAW_FLAGS,
    UNTRUSTED,
    FiemapUnsupported,
    Raw,
    raw_extents,
)
from statehold.engine.freezekeeper import FreezeKeeper, Window
from statehold.errors import Temporary

FREEZE_TIMEOUT = 10.0
"""Seconds one volume's filesystem may stay frozen before the keeper thaws it anyway."""

Keeper = Callable[..., FreezeKeeper]

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


STEP_EXTENTS = 1024
"""Extents shared per ``FICLONERANGE`` step of :func:`preclone`. XFS holds the source's
I/O lock for the whole of one call, ~15-50 µs per extent here: a step of 1024 extents
blocks the volume's writers for tens of milliseconds at most, where one ``FICLONE`` of a
200,000-extent file blocked them for seconds (docs/design/snapshots.md)."""


def steps(mapping: Sequence[Raw], size: int, block: int, per_step: int) -> list[extents.Range]:
    """Pure. Cut ``[0, size)`` into consecutive ranges of at most ``per_step`` extents of
    ``mapping`` each, cut at block-aligned extent starts; the last range ends at ``size``."""
    cuts = [0]
    for i in range(per_step, len(mapping), per_step):
        at = mapping[i][0]
        if at % block == 0 and cuts[-1] < at < size:
            cuts.append(at)
    cuts.append(size)
    return [(a, b - a) for a, b in itertools.pairwise(cuts) if b > a]


def preclone(src: Path, dst: Path, *, mode: int, per_step: int = STEP_EXTENTS) -> Prepared:
    """Copy all of ``src`` to ``dst`` by reflink and map the copy, while ``src`` runs.

    A fragmented file is shared in steps of ``per_step`` extents (``FICLONERANGE``), so no
    single call stalls the volume's writers for long. The copy is then a mix of instants,
    which is fine: :func:`catch_up` shares again every range whose mapping differs from
    the source's once it is frozen. A file with few extents (or no FIEMAP) is one FICLONE.
    """
    block = os.statvfs(src).f_frsize or 4096
    try:
        mapping = raw_extents(src, sync=False)
    except FiemapUnsupported:
        mapping = []
    if len(mapping) <= per_step:
        reflink(src, dst, mode=mode)
    else:
        size = src.stat().st_size
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                os.ftruncate(dst_fd, size)
                for offset, length in steps(mapping, size, block, per_step):
                    reflink_range(src_fd, dst_fd, offset, length)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    size = dst.stat().st_size
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


def _nothing() -> None:
    pass


def copy_frozen(src: Path, dst: Path, target: str, *, timeout: float = FREEZE_TIMEOUT,
                keeper: Keeper = FreezeKeeper, frozen: Callable[[], None] = _nothing,
                cloned: Callable[[], None] = _nothing) -> Window:
    """Copy the volume file ``src``, whose filesystem is mounted at ``target``, to ``dst``
    as it is while that filesystem is frozen, and freeze it only for the part that needs it.

    The whole-file copy (:func:`preclone`, O(extents)) runs first, while the volume still
    runs; then the filesystem is flushed, frozen by a :class:`FreezeKeeper` (which thaws on
    ``timeout`` and if this process dies), caught up (:func:`catch_up`) and thawed. The
    keeper starts before the copy so its start-up overlaps it. ``frozen`` and ``cloned``
    run once frozen and once caught up (fault points). ``dst`` is left durable (fsync).
    Temporary if the watchdog thawed before the catch-up ended (``dst`` is then not a
    frozen image: the caller discards it); the keeper's errors otherwise.
    """
    with keeper(timeout, wait_ready=False) as holder:
        before = preclone(src, dst, mode=0o600)
        freezing.syncfs(target)  # most dirty data goes now, so FIFREEZE has little to do
        holder.freeze([target])
        frozen()
        catch_up(src, dst, before, mode=0o600)
        cloned()
        window = holder.thaw()
    if window.expired:
        raise Temporary(f"{target} stayed frozen longer than {timeout:g} s, so the watchdog "
                        "thawed it before the copy was done; nothing was kept", retry_after=1.0)
    fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return window
