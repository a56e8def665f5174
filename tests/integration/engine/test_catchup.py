"""The two-step reflink on a real XFS pool: an early whole copy, writes, then the catch-up
makes the copy byte-for-byte the source again, sharing only what changed."""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import threading
from pathlib import Path

import pytest

from statehold.engine import catchup
from statehold.engine.ficlone import reflink
from statehold.engine.fiemap import raw_extents
from statehold.engine.pool import Pool

pytestmark = pytest.mark.root

B = 4096
BLOCKS = 8192  # 32 MiB


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_blocks(path: Path, blocks: list[int], seed: int) -> None:
    buf = mmap.mmap(-1, B)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        for i, block in enumerate(blocks):
            buf.seek(0)
            buf.write(hashlib.sha256(f"{seed}-{i}".encode()).digest() * (B // 32))
            os.pwritev(fd, [buf], block * B)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def test_catch_up_makes_the_early_copy_equal_the_source_again(pool: Pool) -> None:
    src, dst = pool.mountpoint / "src.img", pool.mountpoint / "dst.img"
    rng = random.Random(7)
    with open(src, "wb") as fh:
        fh.write(os.urandom(BLOCKS * B))
        fh.flush()
        os.fsync(fh.fileno())
    before = catchup.preclone(src, dst, mode=0o600)
    assert before.mapping is not None
    assert catchup.catch_up(src, dst, before, mode=0o600) == 0  # nothing changed yet
    _write_blocks(src, rng.sample(range(BLOCKS), 300), seed=1)
    os.truncate(src, (BLOCKS + 16) * B)  # grown too: the tail is caught up as well
    assert _digest(dst) != _digest(src)
    shared = catchup.catch_up(src, dst, before, mode=0o600)
    assert 0 < shared <= 301
    assert _digest(dst) == _digest(src)


def test_an_early_copy_made_in_steps_while_written_is_caught_up_exactly(pool: Pool) -> None:
    """Issue 14: a fragmented file is shared in steps of a few extents (so no step stalls its
    writers for long) while a writer keeps changing it; the copy is then a mix of instants,
    and the catch-up still makes it byte-for-byte the source."""
    src, dst = pool.mountpoint / "src.img", pool.mountpoint / "dst.img"
    rng = random.Random(11)
    with open(src, "wb") as fh:
        fh.write(os.urandom(BLOCKS * B))
        fh.flush()
        os.fsync(fh.fileno())
    keep = pool.mountpoint / "keep.img"
    reflink(src, keep)  # a retained snapshot: every write below copies on write
    _write_blocks(src, rng.sample(range(BLOCKS), 400), seed=2)
    assert len(raw_extents(src)) > 40

    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        seed = 100
        while not stop.is_set():
            seed += 1
            _write_blocks(src, [rng.randrange(BLOCKS)], seed=seed)
            written.append(seed)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        before = catchup.preclone(src, dst, mode=0o600, per_step=8)
    finally:
        stop.set()
        thread.join()
    assert written  # the source did change while it was being copied
    assert before.mapping is not None
    catchup.catch_up(src, dst, before, mode=0o600)
    assert _digest(dst) == _digest(src)
