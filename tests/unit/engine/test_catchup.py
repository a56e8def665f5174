"""The catch-up comparison never misses a range the reference diff (extents.compare_maps)
reports, for any pair of extent maps: it may only report more."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.engine.catchup import changed, index, steps
from statehold.engine.extents import align, compare_maps, merge
from statehold.engine.fiemap import Extent, ExtentFlag, Raw

B = 4096
FLAGS = [0, 0, 0, int(ExtentFlag.SHARED), int(ExtentFlag.UNWRITTEN), int(ExtentFlag.MERGED),
         int(ExtentFlag.DELALLOC | ExtentFlag.UNKNOWN), int(ExtentFlag.ENCODED)]


def raw(logical: int, physical: int, length: int, flags: int = 0) -> Raw:
    return (logical, physical, length, 0, 0, flags)


def extent(e: Raw) -> Extent:
    return Extent(e[0], e[1], e[2], ExtentFlag(e[5]))


@st.composite
def maps(draw: st.DrawFn, blocks: int = 24) -> list[Raw]:
    """A file of ``blocks`` blocks cut into extents and holes."""
    out, pos = [], 0
    while pos < blocks:
        length = draw(st.integers(1, 4))
        if draw(st.booleans()):
            physical = draw(st.integers(0, 40)) * B
            out.append(raw(pos * B, physical, min(length, blocks - pos) * B,
                           draw(st.sampled_from(FLAGS))))
        pos += length
    return out


@st.composite
def edited(draw: st.DrawFn) -> tuple[list[Raw], list[Raw]]:
    """A map and the same map after some copy-on-write rewrites (or another map)."""
    before = draw(maps())
    if draw(st.integers(0, 4)) == 0:
        return before, draw(maps())
    now = []
    for e in before:
        if draw(st.integers(0, 3)) == 0:  # rewritten: a block moves elsewhere, or splits
            cut = draw(st.integers(0, e[2] // B)) * B
            if cut:
                now.append(raw(e[0], e[1], cut, e[5]))
            if e[2] - cut:
                now.append(raw(e[0] + cut, draw(st.integers(41, 80)) * B, e[2] - cut, e[5]))
        else:
            now.append(e)
    return before, now


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {b for off, n in ranges for b in range(off // B, (off + n) // B)}


@settings(max_examples=400, deadline=None)
@given(edited())
def test_catch_up_reports_every_range_the_reference_diff_reports(pair: tuple[list[Raw], list[Raw]]) -> None:
    before, now = pair
    size = 24 * B
    reference = align(compare_maps([extent(e) for e in before], size,
                                   [extent(e) for e in now], size), B, size)
    ours = changed(index(before), now, size, B)
    assert covered(reference) <= covered(ours)
    assert ours == merge(ours)


def test_identical_maps_need_nothing_and_untrusted_extents_always_do() -> None:
    m = [raw(0, 8 * B, 4 * B, int(ExtentFlag.SHARED)), raw(4 * B, 100 * B, 2 * B)]
    assert changed(index(m), list(m), 8 * B, B) == []
    # the same map reported with other informational flags is still the same data
    relabeled = [raw(0, 8 * B, 4 * B), raw(4 * B, 100 * B, 2 * B, int(ExtentFlag.LAST))]
    assert changed(index(m), relabeled, 8 * B, B) == []
    odd = [raw(0, 8 * B, 4 * B, int(ExtentFlag.DELALLOC | ExtentFlag.UNKNOWN))]
    assert changed(index(odd), list(odd), 8 * B, B) == [(0, 4 * B)]


def test_a_rewritten_block_and_a_punched_hole_are_reported() -> None:
    before = [raw(0, 8 * B, 4 * B)]
    now = [raw(0, 8 * B, B), raw(B, 50 * B, B), raw(2 * B, 10 * B, B)]  # block 1 moved, 3 punched
    assert changed(index(before), now, 4 * B, B) == [(0, 4 * B)]  # over-reports, never misses


def test_steps_cover_the_file_once_cut_at_aligned_extent_starts() -> None:
    mapping: list[Raw] = [(i * 8192, 10_000 + i, 4096, 0, 0, 0) for i in range(10)]
    mapping.append((10 * 8192 + 512, 99, 4096, 0, 0, 0))  # unaligned start: never a cut
    size = 12 * 8192
    ranges = steps(mapping, size, 4096, 3)
    assert [r[0] for r in ranges] == [0, 3 * 8192, 6 * 8192, 9 * 8192]
    assert sum(length for _, length in ranges) == size
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))
    assert steps(mapping, size, 4096, 100) == [(0, size)]
