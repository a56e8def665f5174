"""Expand: truncate, loop capacity refresh, filesystem growth online or at next mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.engine import loop
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GrowResult, MiB, VolumeMode
from statehold.errors import NotFound, OutOfCapacity, OutOfRange
from statehold.runner import run

pytestmark = pytest.mark.root


def _df_size(target: Path) -> int:
    """Total size as ``df`` reports it (what a user looks at)."""
    out = run(["df", "-B1", "--output=size", str(target)]).stdout.split()
    return int(out[-1])


@pytest.mark.parametrize("fs", [FsType.XFS, FsType.BTRFS])
def test_online_expand_is_visible_in_df(pool: Pool, scratch: Path, fs: FsType) -> None:
    pool.create_volume("v", 300 * MiB, fs=fs)
    mnt = scratch / "m"
    pool.mount("v", mnt)
    (mnt / "keep").write_text("data")
    before = _df_size(mnt)
    result = pool.expand("v", 700 * MiB)
    assert result.grow is GrowResult.ONLINE
    assert result.volume.size == 700 * MiB
    assert result.volume.path.stat().st_size == 700 * MiB
    assert loop.size_of(result.volume.device or "") == 700 * MiB
    assert _df_size(mnt) >= before + 350 * MiB
    assert (mnt / "keep").read_text() == "data"


def test_ext4_mounted_grows_at_next_mount(pool: Pool, scratch: Path) -> None:
    pool.create_volume("e", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    pool.mount("e", mnt)
    (mnt / "keep").write_text("data")
    before = _df_size(mnt)
    result = pool.expand("e", 256 * MiB)
    assert result.grow is GrowResult.AT_NEXT_MOUNT  # the kernel here refuses online resize
    assert result.volume.size == 256 * MiB
    pool.unmount("e", mnt)
    pool.mount("e", mnt)
    assert _df_size(mnt) >= before + 150 * MiB
    assert (mnt / "keep").read_text() == "data"


def test_ext4_unmounted_grows_offline_now(pool: Pool, scratch: Path) -> None:
    pool.create_volume("e", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    pool.mount("e", mnt)
    before = _df_size(mnt)
    pool.unmount("e", mnt)
    assert pool.expand("e", 256 * MiB).grow is GrowResult.OFFLINE
    pool.mount("e", mnt)
    assert _df_size(mnt) >= before + 150 * MiB


def test_expand_of_blank_and_block_volumes_grows_only_the_device(pool: Pool) -> None:
    pool.create_volume("blank", 64 * MiB, fs=FsType.EXT4)
    assert pool.expand("blank", 128 * MiB).grow is GrowResult.NOT_FORMATTED
    pool.create_volume("blk", 64 * MiB, mode=VolumeMode.BLOCK)
    dev = pool.attach("blk")
    assert pool.expand("blk", 96 * MiB).grow is GrowResult.NOT_FORMATTED
    assert loop.size_of(dev) == 96 * MiB


def test_shrink_is_out_of_range_and_changes_nothing(pool: Pool) -> None:
    pool.create_volume("v", 128 * MiB, mode=VolumeMode.BLOCK)
    with pytest.raises(OutOfRange):
        pool.expand("v", 64 * MiB)
    assert pool.get_volume("v").size == 128 * MiB
    assert pool.get_volume("v").path.stat().st_size == 128 * MiB
    assert pool.expand("v", 128 * MiB).volume.size == 128 * MiB  # same size: no-op


def test_expand_past_the_pool_limit_is_out_of_capacity(pool: Pool) -> None:
    pool.create_volume("v", 128 * MiB, mode=VolumeMode.BLOCK)
    allocatable = pool.capacity().allocatable
    with pytest.raises(OutOfCapacity):
        pool.expand("v", 128 * MiB + allocatable + MiB)
    assert pool.get_volume("v").size == 128 * MiB
    assert pool.db.intents() == []
    with pytest.raises(NotFound):
        pool.expand("ghost", 128 * MiB)
