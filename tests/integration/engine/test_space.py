"""Space that comes back, and a pool that says when it is filling (issue 14, parts 3 and 4).

Real loop devices and filesystems: a volume's trim punches holes in its backing file and
the pool's statvfs usage drops by what was deleted; a snapshot's exclusive bytes are what
was overwritten in its volume since, and deleting it frees exactly those; above its
critical mark a pool refuses new volumes, clones and snapshots but still answers retries.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import pytest

from statehold.engine import loop, trim
from statehold.engine.capacity import Level
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, Source, SourceKind, VolumeMode
from statehold.errors import FailedPrecondition, InvalidArgument, OutOfCapacity

pytestmark = pytest.mark.root


def write_file(path: Path, nbytes: int, seed: int) -> str:
    """``nbytes`` of incompressible data, fsynced; returns its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(nbytes // MiB):
            block = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (MiB // 32)
            f.write(block)
            digest.update(block)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def write_device(device: str, offset: int, nbytes: int, seed: int) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for i in range(nbytes // MiB):
            block = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (MiB // 32)
            os.pwrite(fd, block, offset + i * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)


def within_one_percent(measured: int, expected: int) -> bool:
    return abs(measured - expected) <= expected // 100


@pytest.mark.parametrize("fstype", [FsType.XFS, FsType.EXT4, FsType.BTRFS])
def test_trim_gives_what_was_deleted_back_to_the_pool(pool: Pool, engine_home: Path,
                                                      fstype: FsType) -> None:
    pool.create_volume("data", 1024 * MiB, fs=fstype)
    target = engine_home / "mnt"
    vol = pool.mount("data", target)
    assert vol.device is not None
    assert loop.discard_max_bytes(vol.device) > 0  # the loop device takes discards
    kept = write_file(target / "kept", 16 * MiB, seed=0)
    deleted = 128 * MiB
    for i in range(8):
        write_file(target / f"f{i}", deleted // 8, seed=i + 1)
    # the baseline: what the filesystem freed before (mkfs leftovers, btrfs's copied-on-
    # write metadata) goes now, so the next trim measures the deleted files alone
    pool.trim("data")
    before = pool.capacity().used
    for i in range(8):
        (target / f"f{i}").unlink()
    # trimmed the moment unlink returns: the trim itself must wait for what the filesystem
    # frees in the background (XFS's inodegc) and for the loop device's hole punches
    result = pool.trim("data")
    after = pool.capacity().used
    assert within_one_percent(before - after, deleted), (before - after) / MiB
    assert within_one_percent(result.released, deleted), result.released / MiB
    assert sha256_of(target / "kept") == kept  # what stayed is untouched
    record = pool.last_trim("data")
    assert record is not None and record.released == result.released


def test_trim_needs_a_mounted_filesystem(pool: Pool, engine_home: Path) -> None:
    pool.create_volume("fs", 512 * MiB, fs=FsType.XFS)
    with pytest.raises(FailedPrecondition, match="not mounted"):
        pool.trim("fs")
    pool.create_volume("blk", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    pool.attach("blk")
    with pytest.raises(FailedPrecondition, match="block volume"):
        pool.trim("blk")
    assert pool.last_trim("fs") is None


def wait_used_below(pool: Pool, limit: int, timeout: float = 30.0) -> int:
    """Pool usage once it fell to ``limit`` or below (XFS frees an unlinked file's blocks
    in the background), or the last value seen at the deadline."""
    deadline = time.monotonic() + timeout
    used = pool.capacity().used
    while used > limit and time.monotonic() < deadline:
        time.sleep(0.05)
        used = pool.capacity().used
    return used


def test_snapshot_exclusive_bytes_are_what_was_overwritten_since(pool: Pool) -> None:
    pool.create_volume("blk", 256 * MiB, mode=VolumeMode.BLOCK, fs=None)
    device = pool.attach("blk")
    write_device(device, 0, 64 * MiB, seed=1)
    pool.create_snapshot("blk", "s1")
    first = pool.snapshot_space("s1")
    assert (first.allocated, first.exclusive, first.shared) == (64 * MiB, 0, 64 * MiB)

    write_device(device, 8 * MiB, 16 * MiB, seed=2)  # overwrite a known amount
    s1 = pool.snapshot_space("s1")
    assert (s1.exclusive, s1.shared) == (16 * MiB, 48 * MiB)
    vol = pool.volume_space("blk")
    assert (vol.exclusive, vol.shared) == (16 * MiB, 48 * MiB)

    pool.create_snapshot("blk", "s2")  # shares everything with the volume, s1 keeps its 16
    assert pool.snapshot_space("s2").exclusive == 0
    assert pool.snapshot_space("s1").exclusive == 16 * MiB

    pool.detach("blk")
    before = pool.capacity().used
    pool.delete_snapshot("s1")  # frees exactly what it held alone
    after = wait_used_below(pool, before - 16 * MiB + 16 * MiB // 100)
    assert within_one_percent(before - after, 16 * MiB), (before - after) / MiB


def test_above_the_critical_mark_new_volumes_clones_and_snapshots_are_refused(
        node: Node, pool: Pool) -> None:
    pool.create_volume("data", 512 * MiB, mode=VolumeMode.BLOCK, fs=None)
    write_device(pool.attach("data"), 0, 128 * MiB, seed=3)
    pool.create_snapshot("data", "keep")
    assert pool.space().level is Level.OK
    with pytest.raises(InvalidArgument):
        pool.set_thresholds(50, 40)
    used = pool.space().used_percent
    assert used >= 2
    pool.set_thresholds(1, math.floor(used))  # the pool is now above its critical mark
    space = pool.space()
    assert space.level is Level.CRITICAL

    refusals = [
        lambda: pool.create_volume("new", 64 * MiB, mode=VolumeMode.BLOCK, fs=None),
        lambda: pool.create_volume("copy", 512 * MiB, mode=VolumeMode.BLOCK, fs=None,
                                   source=Source(SourceKind.SNAPSHOT, "keep")),
        lambda: pool.create_snapshot("data", "another"),
        lambda: node.snapshot_group("group", [("test", "data", "group-data")]),
    ]
    for attempt in refusals:
        with pytest.raises(OutOfCapacity, match="critical mark") as caught:
            attempt()
        assert "new volumes, clones and snapshots are refused" in str(caught.value)
    assert [v.name for v in pool.list_volumes()] == ["data"]
    assert [s.name for s in pool.list_snapshots()] == ["keep"]
    # retries of what exists are still answered (CSI retries them)
    assert pool.create_snapshot("data", "keep").name == "keep"
    assert pool.create_volume("data", 512 * MiB, mode=VolumeMode.BLOCK, fs=None).name == "data"

    pool.set_thresholds(80, 90)
    assert pool.space().level is Level.OK
    assert pool.create_snapshot("data", "another").name == "another"


def test_scheduled_trim_runs_once_per_slot_and_waits_for_a_mount(pool: Pool,
                                                                  engine_home: Path) -> None:
    schedule = "0 3 * * *"
    vol = pool.create_volume("sched", 512 * MiB, fs=FsType.XFS,
                             labels={trim.SCHEDULE_LABEL: schedule})
    pool.create_volume("plain", 512 * MiB, fs=FsType.XFS)  # no schedule: never trimmed
    first = trim.next_slot(schedule, vol.created_at)
    assert trim.run_due([pool], first - 1) == []
    # due but not mounted: reported, and still due
    [skipped] = trim.run_due([pool], first + 1)
    assert (skipped.volume, skipped.skipped) == (vol.id, "not mounted")

    target = engine_home / "sched"
    pool.mount("sched", target)
    pool.mount("plain", engine_home / "plain")
    write_file(target / "junk", 32 * MiB, seed=4)
    (target / "junk").unlink()
    [done] = trim.run_due([pool], first + 2)
    assert done.volume == vol.id and done.result is not None
    assert done.result.released >= 32 * MiB * 99 // 100
    record = pool.last_trim("sched")
    assert record is not None and record.last == first + 2
    assert trim.run_due([pool], first + 3600) == []  # that slot is served
    [again] = trim.run_due([pool], first + 86400)    # the next one
    assert again.result is not None
    assert pool.last_trim("plain") is None
