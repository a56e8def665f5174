"""Volumes on a real file-backed XFS pool: create, attach, mount, delete, and bad input."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from statehold.engine import loop, mounts
from statehold.engine import pool as pool_module
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, VolumeMode
from statehold.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    StateholdError,
)

pytestmark = pytest.mark.root


def _nothing_created(pool: Pool) -> None:
    assert pool.list_volumes() == []
    assert list(pool.volumes_dir.iterdir()) == []
    assert pool.db.intents() == []


def test_volume_is_a_sparse_file_of_the_rounded_size(pool: Pool) -> None:
    vol = pool.create_volume("thin", 1 * GiB + 1, fs=FsType.EXT4)
    assert vol.size == 1 * GiB + MiB
    assert vol.id == "test/thin"
    st = vol.path.stat()
    assert st.st_size == vol.size
    assert st.st_blocks * 512 < MiB  # thin: nothing allocated yet
    assert pool.capacity().provisioned == vol.size


def test_small_filesystem_volumes_are_rounded_up_to_the_fs_minimum(pool: Pool) -> None:
    assert pool.create_volume("x", 10 * MiB, fs=FsType.XFS).size == 300 * MiB
    assert pool.create_volume("e", 10 * MiB, fs=FsType.EXT4).size == 16 * MiB
    assert pool.create_volume("b", 1, mode=VolumeMode.BLOCK).size == MiB


def test_create_same_name_same_spec_is_idempotent(pool: Pool) -> None:
    first = pool.create_volume("same", 64 * MiB, fs=FsType.EXT4, labels={"a": "b"})
    again = pool.create_volume("same", 64 * MiB, fs=FsType.EXT4)
    assert again == first
    assert len(pool.list_volumes()) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"size": 128 * MiB, "fs": FsType.EXT4},
        {"size": 64 * MiB, "fs": FsType.BTRFS},
        {"size": 64 * MiB, "mode": VolumeMode.BLOCK},
    ],
)
def test_create_same_name_other_spec_is_already_exists(pool: Pool, other: dict[str, object]) -> None:
    pool.create_volume("taken", 64 * MiB, fs=FsType.EXT4)
    with pytest.raises(AlreadyExists):
        pool.create_volume("taken", **other)  # type: ignore[arg-type]
    assert pool.get_volume("taken").size == 64 * MiB


@pytest.mark.parametrize("name", ["", "UPPER", "../escape", "a/b", "x" * 64, "-dash", ".hidden"])
def test_invalid_volume_names_change_nothing(pool: Pool, name: str) -> None:
    with pytest.raises(InvalidArgument):
        pool.create_volume(name, 64 * MiB)
    _nothing_created(pool)


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "1Gi"])
def test_invalid_sizes_change_nothing(pool: Pool, size: object) -> None:
    with pytest.raises(InvalidArgument):
        pool.create_volume("v", size)  # type: ignore[arg-type]
    _nothing_created(pool)


def test_unknown_filesystem_or_mode_is_invalid_argument(pool: Pool) -> None:
    with pytest.raises(InvalidArgument):
        pool.create_volume("v", 64 * MiB, fs="zfs")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        pool.create_volume("v", 64 * MiB, mode="tape")  # type: ignore[arg-type]
    _nothing_created(pool)


def test_over_capacity_is_refused_and_changes_nothing(pool: Pool) -> None:
    cap = pool.capacity()
    with pytest.raises(OutOfCapacity):
        pool.create_volume("huge", cap.allocatable + MiB, mode=VolumeMode.BLOCK)
    _nothing_created(pool)
    # exactly what is allocatable still fits (thin)
    fits = cap.allocatable // MiB * MiB
    assert pool.create_volume("big", fits, mode=VolumeMode.BLOCK).size == fits
    assert pool.capacity().allocatable < MiB


def test_overprovision_ratio_bounds_what_may_be_provisioned(pool: Pool) -> None:
    pool.set_overprovision_ratio(1.0)
    cap = pool.capacity()
    assert cap.allocatable == cap.total
    with pytest.raises(OutOfCapacity):
        pool.create_volume("v", cap.total + MiB, mode=VolumeMode.BLOCK)
    with pytest.raises(InvalidArgument):
        pool.set_overprovision_ratio(0.5)


def test_get_and_delete_missing_volume_are_not_found(pool: Pool) -> None:
    with pytest.raises(NotFound):
        pool.get_volume("ghost")
    with pytest.raises(NotFound):
        pool.delete_volume("ghost")
    with pytest.raises(NotFound):
        pool.attach("ghost")


def test_block_volume_attaches_with_direct_io_and_4k_blocks(pool: Pool) -> None:
    pool.create_volume("blk", 64 * MiB, mode=VolumeMode.BLOCK)
    dev = pool.attach("blk")
    assert pool.attach("blk") == dev  # idempotent
    sysdir = Path("/sys/block") / dev.removeprefix("/dev/")
    assert (sysdir / "loop" / "dio").read_text().strip() == "1"
    assert (sysdir / "queue" / "logical_block_size").read_text().strip() == "4096"
    assert (sysdir / "loop" / "backing_file").read_text().strip() == str(pool.volume_path("blk"))
    assert pool.get_volume("blk").device == dev
    payload = os.urandom(4096) * 16
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(pool.volume_path("blk"), "rb") as fh:
        fh.seek(8192)
        assert fh.read(len(payload)) == payload
    with pytest.raises(FailedPrecondition):
        pool.mount("blk", Path("/nonexistent-never-created"))
    pool.detach("blk")
    pool.detach("blk")  # idempotent
    assert loop.find(pool.volume_path("blk")) == []


@pytest.mark.parametrize("fs", [FsType.XFS, FsType.EXT4, FsType.BTRFS])
def test_filesystem_volume_is_formatted_on_first_mount(pool: Pool, scratch: Path, fs: FsType) -> None:
    pool.create_volume("fsv", 300 * MiB, fs=fs)
    assert not pool.is_formatted("fsv")
    mnt = scratch / "m"
    vol = pool.mount("fsv", mnt, options=["noatime"])
    assert vol.formatted and pool.is_formatted("fsv")
    found = mounts.mount_at(mnt)
    assert found is not None and found.fstype == fs.value and found.source == vol.device
    (mnt / "hello").write_text("kept")
    assert pool.mount("fsv", mnt) == vol  # idempotent for the same target
    pool.unmount("fsv", mnt)
    pool.unmount("fsv", mnt)  # idempotent
    pool.detach("fsv")
    # second mount: no mkfs, the data is still there
    pool.mount("fsv", mnt, readonly=True)
    assert (mnt / "hello").read_text() == "kept"
    with pytest.raises(OSError):
        (mnt / "other").write_text("ro")


def test_mount_on_a_target_holding_something_else_is_refused(pool: Pool, scratch: Path) -> None:
    pool.create_volume("a", 64 * MiB, fs=FsType.EXT4)
    pool.create_volume("b", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    pool.mount("a", mnt)
    with pytest.raises(FailedPrecondition):
        pool.mount("b", mnt)
    with pytest.raises(FailedPrecondition):
        pool.unmount("b", mnt)
    assert mounts.mount_at(mnt) is not None


def test_delete_of_mounted_or_attached_volume_is_failed_precondition(pool: Pool, scratch: Path) -> None:
    pool.create_volume("busy", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    pool.mount("busy", mnt)
    with pytest.raises(FailedPrecondition):
        pool.delete_volume("busy")
    with pytest.raises(FailedPrecondition):
        pool.detach("busy")
    pool.unmount("busy", mnt)
    with pytest.raises(FailedPrecondition):
        pool.delete_volume("busy")
    assert pool.get_volume("busy").path.exists()
    pool.detach("busy")
    pool.delete_volume("busy")
    _nothing_created(pool)
    assert pool.capacity().provisioned == 0


def test_failed_first_mount_leaves_nothing_attached(pool: Pool, scratch: Path) -> None:
    pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    with pytest.raises(StateholdError):
        pool.mount("v", scratch / "m", options=["no-such-option-statehold"])
    assert pool.get_volume("v").device is None
    assert loop.find(pool.volume_path("v")) == []
    assert mounts.mount_at(scratch / "m") is None


def test_pool_held_by_another_process_is_aborted_after_the_timeout(
        pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "LOCK_TIMEOUT", 0.2)
    fd = os.open(pool.meta_dir / "lock", os.O_RDWR)  # another open file: another holder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Aborted):
            pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    finally:
        os.close(fd)
    _nothing_created(pool)
    assert pool.create_volume("v", 64 * MiB, fs=FsType.EXT4).size == 64 * MiB


@pytest.mark.parametrize("fs", [FsType.XFS, FsType.EXT4, FsType.BTRFS])
def test_formatting_keeps_a_large_volume_thin(pool: Pool, scratch: Path, fs: FsType) -> None:
    vol = pool.create_volume("big", 10 * GiB, fs=fs)
    pool.mount("big", scratch / "m")
    allocated = vol.path.stat().st_blocks * 512
    assert allocated < 128 * MiB, f"{fs} allocated {allocated >> 20} MiB of a 10 GiB volume"
