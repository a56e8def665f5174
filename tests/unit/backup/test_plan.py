"""The incremental plan: which chunks are read and which are copied from the parent."""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.backup.imagebackup import plan
from statehold.backup.manifest import Manifest

C = 1 << 20


def parent(size: int, idxs: list[int]) -> Manifest:
    return Manifest(backup_id="p", volume="v", size=size, chunk_size=C, created=0,
                    offsets=array("Q", [i * C for i in idxs]), ids=b"".join(bytes([i]) * 32 for i in idxs))


def test_without_a_parent_every_chunk_with_data_is_read() -> None:
    p = plan(10 * C, C, [(0, 100), (3 * C - 1, 2), (9 * C, C)], None, None)
    assert p.read == [0, 2, 3, 9] and p.copied == {}


def test_only_chunks_touching_changes_are_read() -> None:
    par = parent(10 * C, [0, 1, 2, 5, 9])
    p = plan(10 * C, C, [(0, 3 * C), (5 * C, C), (9 * C, C)], [(C + 4096, 4096), (9 * C, 8192)], par)
    assert p.read == [1, 9]
    assert sorted(p.copied) == [0, 2, 5]
    assert p.copied[5] == bytes([5]) * 32


def test_a_chunk_changed_into_a_hole_disappears() -> None:
    par = parent(4 * C, [0, 1])
    p = plan(4 * C, C, [(0, C)], [(C, C)], par)
    assert p.read == [0] or p.read == []
    assert 1 not in p.copied and 1 not in p.read


def test_growth_rereads_the_old_last_chunk() -> None:
    par = parent(2 * C + 10, [0, 2])
    p = plan(3 * C, C, [(0, 3 * C)], [(2 * C + 4096, C - 4096)], par)
    assert 2 in p.read and 0 in p.copied


def test_shrink_drops_entries_past_the_end() -> None:
    par = parent(4 * C, [0, 1, 3])
    p = plan(2 * C, C, [(0, 2 * C)], [], par)
    assert sorted(p.copied) == [0] and p.read == [1]


def test_untouched_written_zeros_are_not_read_again() -> None:
    par = parent(4 * C, [0])  # chunk 2 held written zeros: data to SEEK_DATA, no entry
    p = plan(4 * C, C, [(0, C), (2 * C, C)], [], par)
    assert p.read == [] and sorted(p.copied) == [0]


# Property: for any parent image, any change set (reported as a superset, as FIEMAP may
# over-report) and any resize, copying the plan's untouched entries and reading the rest
# yields exactly the manifest a full backup of the new image would have.

HOLE, ZERO = -1, 0
contents = st.one_of(st.just(HOLE), st.just(ZERO), st.integers(1, 5))


def manifest_of(image: list[int], size: int) -> dict[int, int]:
    return {i: v for i, v in enumerate(image) if v not in (HOLE, ZERO) and i * C < size}


@settings(max_examples=300, deadline=None)
@given(old=st.lists(contents, min_size=1, max_size=12), data=st.data())
def test_plan_reconstructs_the_full_manifest(old: list[int], data: st.DataObject) -> None:
    new_len = data.draw(st.integers(1, 14))
    new = [old[i] if i < len(old) else HOLE for i in range(new_len)]
    changed_idx = set(data.draw(st.sets(st.integers(0, new_len - 1), max_size=new_len)))
    for i in changed_idx:
        new[i] = data.draw(contents)
    old_size = len(old) * C - data.draw(st.integers(0, C - 1))
    new_size = new_len * C - data.draw(st.integers(0, C - 1))
    # the engine's diff: every chunk whose content differs, plus past the old end where data
    truly = {i for i in range(new_len) if i >= len(old) or new[i] != old[i]}
    extra = data.draw(st.sets(st.integers(0, new_len - 1), max_size=3))
    changed = [(i * C, C) for i in sorted(truly | extra | changed_idx)]
    data_r = [(i * C, C) for i, v in enumerate(new) if v != HOLE]
    par_map = manifest_of(old, old_size)
    par = Manifest(backup_id="p", volume="v", size=old_size, chunk_size=C, created=0,
                   offsets=array("Q", [i * C for i in sorted(par_map)]),
                   ids=b"".join(bytes([par_map[i]]) * 32 for i in sorted(par_map)))
    p = plan(new_size, C, data_r, changed, par)
    got = {i: cid[0] for i, cid in p.copied.items()}
    for i in p.read:
        if new[i] not in (HOLE, ZERO):
            got[i] = new[i]
    assert got == manifest_of(new, new_size)
