"""changed_ranges on the engine's own snapshots: a block volume written through its loop
device (direct I/O, as a workload writes), snapshotted by the engine, diffed."""

from __future__ import annotations

import itertools
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statehold.engine.extents import changed_ranges, total
from statehold.engine.pool import Pool
from statehold.engine.types import MiB, VolumeMode

pytestmark = pytest.mark.root

BS = 4096
SIZE = 16 * MiB
_names = itertools.count()

block_writes = st.lists(
    st.tuples(st.integers(0, SIZE // BS - 1), st.integers(1, 16), st.integers(1, 255)),
    max_size=8,
)


def write_blocks(device: str, writes: list[tuple[int, int, int]]) -> set[int]:
    """O_DIRECT writes of whole blocks through the device; returns the blocks touched."""
    touched: set[int] = set()
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        for block, count, byte in writes:
            count = min(count, SIZE // BS - block)
            buf = mmap.mmap(-1, count * BS)
            buf.write(bytes([byte]) * (count * BS))
            os.pwritev(fd, [buf], block * BS)
            buf.close()
            touched.update(range(block, block + count))
        os.fsync(fd)
    finally:
        os.close(fd)
    return touched


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before=block_writes, after=block_writes)
def test_engine_snapshots_diff_covers_every_change_and_only_near_writes(
    pool: Pool, before: list[tuple[int, int, int]], after: list[tuple[int, int, int]]
) -> None:
    n = next(_names)
    vol, s1, s2 = f"v{n}", f"v{n}-a", f"v{n}-b"
    pool.create_volume(vol, SIZE, mode=VolumeMode.BLOCK, fs=None)
    device = pool.attach(vol)
    try:
        write_blocks(device, before)
        a = pool.create_snapshot(vol, s1)
        touched = write_blocks(device, after)
        b = pool.create_snapshot(vol, s2)
    finally:
        pool.detach(vol)
    got = changed_ranges(a.path, b.path)
    old, new = a.path.read_bytes(), b.path.read_bytes()
    for i in range(0, SIZE, BS):
        if old[i : i + BS] != new[i : i + BS]:
            assert any(off <= i and i + BS <= off + ln for off, ln in got), f"block {i // BS} missed"
    reported = {off // BS + k for off, ln in got for k in range(ln // BS)}
    cow_unit = 128 * 1024 // BS
    assert all(any(abs(r - t) < cow_unit for t in touched) for r in reported)
    assert total(got) <= len(touched) * BS + len(after) * 2 * 128 * 1024
    for name in (s1, s2):
        pool.delete_snapshot(name)
    pool.delete_volume(vol)
