"""Pure parts of the changed-extent diff: range merging, alignment, mapping comparison."""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.engine.extents import align, changed_ranges, compare_maps, data_ranges, merge, total
from statehold.engine.fiemap import Extent, ExtentFlag, decode
from statehold.errors import InvalidArgument, NotFound

U = 512  # unit of the synthetic maps below: small numbers keep the brute force cheap


def test_merge_joins_overlapping_and_touching_ranges_and_sorts() -> None:
    assert merge([(10, 5), (0, 4), (4, 2), (12, 10), (30, 0)]) == [(0, 6), (10, 12)]


def test_align_widens_to_blocks_and_clamps_at_limit() -> None:
    assert align([(5000, 10)], 4096, 1 << 20) == [(4096, 4096)]
    assert align([(100, 1), (4000, 200)], 4096, 1 << 20) == [(0, 8192)]
    # a last range ends at the file size when that size is not block aligned
    assert align([(8190, 100)], 4096, 9000) == [(4096, 9000 - 4096)]
    assert align([(9000, 5)], 4096, 9000) == []


@pytest.mark.parametrize("block", [0, -4096, 3000])
def test_align_rejects_a_block_that_is_not_a_power_of_two(block: int) -> None:
    with pytest.raises(InvalidArgument):
        align([(0, 1)], block, 10)


def _ext(logical: int, physical: int, length: int, flags: ExtentFlag = ExtentFlag(0)) -> Extent:
    return Extent(logical * U, physical * U, length * U, flags)


def test_identical_maps_are_unchanged_even_if_split_differently() -> None:
    old = [_ext(0, 100, 8)]
    new = [_ext(0, 100, 3), _ext(3, 103, 5, ExtentFlag.SHARED | ExtentFlag.LAST)]
    assert compare_maps(old, 8 * U, new, 8 * U) == []


def test_rewritten_block_holes_and_growth_are_changed() -> None:
    old = [_ext(0, 100, 4)]
    new = [_ext(0, 100, 1), _ext(1, 500, 1), _ext(2, 102, 1), _ext(6, 700, 2)]
    # block 1 rewritten, block 3 punched, blocks 4-5 a hole in both, 6-7 past old's size
    assert compare_maps(old, 4 * U, new, 8 * U) == [(1 * U, U), (3 * U, U), (6 * U, 2 * U)]


def test_untrusted_extents_are_changed_even_at_the_same_address() -> None:
    for flag in (ExtentFlag.UNKNOWN, ExtentFlag.DELALLOC, ExtentFlag.ENCODED, ExtentFlag.DATA_INLINE):
        old = [_ext(0, 100, 2, flag)]
        new = [_ext(0, 100, 2, flag)]
        assert compare_maps(old, 2 * U, new, 2 * U) == [(0, 2 * U)], flag


def test_unwritten_versus_written_at_the_same_address_is_changed() -> None:
    old = [_ext(0, 100, 2, ExtentFlag.UNWRITTEN)]
    new = [_ext(0, 100, 2)]
    assert compare_maps(old, 2 * U, new, 2 * U) == [(0, 2 * U)]


def test_extents_past_the_end_of_either_file_are_ignored() -> None:
    # old was truncated to 2 units but keeps a preallocated extent beyond its size
    old = [_ext(0, 100, 4)]
    new = [_ext(0, 100, 4)]
    assert compare_maps(old, 2 * U, new, 4 * U) == [(2 * U, 2 * U)]
    assert compare_maps(old, 4 * U, new, 3 * U) == []


def test_decode_reads_the_kernel_struct_layout() -> None:
    head = struct.pack("=QQIIII", 0, 2**64 - 1, 1, 2, 2, 0)
    e1 = struct.pack("=QQQQQI12x", 0, 4096, 8192, 0, 0, 0x2000)
    e2 = struct.pack("=QQQQQI12x", 8192, 65536, 4096, 0, 0, 0x2001)
    mapped, ext = decode(head + e1 + e2)
    assert mapped == 2
    assert ext == [
        Extent(0, 4096, 8192, ExtentFlag.SHARED),
        Extent(8192, 65536, 4096, ExtentFlag.SHARED | ExtentFlag.LAST),
    ]


# A random map: a list of (kind, physical) per unit, kind 0 = hole, 1 = data, 2 = unwritten.
unit_map = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6)), min_size=0, max_size=24)


def _to_extents(units: list[tuple[int, int]]) -> list[Extent]:
    """Turn a per-unit map into extents, joining runs with contiguous physical addresses."""
    out: list[Extent] = []
    for i, (kind, phys) in enumerate(units):
        if kind == 0:
            continue
        flags = ExtentFlag.UNWRITTEN if kind == 2 else ExtentFlag(0)
        p = phys * 64 + i  # contiguous when the same "region" repeats
        last = out[-1] if out else None
        if last and last.end == i * U and last.flags == flags and last.physical + last.length == p * U:
            out.pop()
            out.append(Extent(last.logical, last.physical, last.length + U, flags))
        else:
            out.append(Extent(i * U, p * U, U, flags))
    return out


@settings(max_examples=300, deadline=None)
@given(old=unit_map, new=unit_map, old_units=st.integers(0, 24), new_units=st.integers(0, 24))
def test_compare_maps_reports_exactly_the_units_whose_mapping_differs(
    old: list[tuple[int, int]], new: list[tuple[int, int]], old_units: int, new_units: int
) -> None:
    got = compare_maps(_to_extents(old), old_units * U, _to_extents(new), new_units * U)
    want = []
    for i in range(new_units):
        o = old[i] if i < len(old) and i < old_units else (0, 0)
        n = new[i] if i < len(new) else (0, 0)
        same = (o[0] == n[0] == 0) or (o[0] == n[0] != 0 and o[1] == n[1])
        if not same:
            want.append((i * U, U))
    assert got == merge(want)
    assert total(got) <= new_units * U


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory on tmpfs, a filesystem without FIEMAP (but with SEEK_DATA)."""
    path = Path(tempfile.mkdtemp(prefix="statehold-extents-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_without_fiemap_every_data_range_of_either_file_counts_as_changed(shm_dir: Path) -> None:
    old, new = shm_dir / "old", shm_dir / "new"
    with open(old, "wb") as f:
        f.truncate(1 << 20)
        f.seek(100_000)
        f.write(b"o" * 10)
    with open(new, "wb") as f:
        f.truncate(1 << 20)
        f.seek(500_000)
        f.write(b"n" * 10)
    page_old, page_new = 100_000 // 4096 * 4096, 500_000 // 4096 * 4096
    assert data_ranges(new) == [(page_new, 4096)]  # tmpfs reports whole pages
    # old's data must be reported too: new reads zeros where old had bytes
    assert changed_ranges(old, new) == [(page_old, 4096), (page_new, 4096)]


def test_missing_files_are_not_found(shm_dir: Path) -> None:
    with pytest.raises(NotFound):
        changed_ranges(shm_dir / "nope", shm_dir / "nope2")
    with pytest.raises(NotFound):
        data_ranges(shm_dir / "nope")
    (shm_dir / "x").write_bytes(b"x")
    with pytest.raises(InvalidArgument):
        changed_ranges(shm_dir / "x", shm_dir / "x", block=1000)
