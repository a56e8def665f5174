"""Recovery beyond intents: files, loop devices and modes that disagree with the database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from statehold.engine import loop, mounts
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, VolumeMode
from statehold.errors import FailedPrecondition

pytestmark = pytest.mark.root


def test_unknown_file_is_moved_to_orphans_not_deleted(pool: Pool) -> None:
    stray = pool.volumes_dir / "stray.img"
    stray.write_bytes(b"someone else's bytes")
    lines = pool.reconcile()
    assert any("stray.img" in line for line in lines)
    assert not stray.exists()
    kept = pool.meta_dir / "orphans" / "volumes-stray.img"
    assert kept.read_bytes() == b"someone else's bytes"
    assert pool.reconcile() == []  # converged


def test_loop_device_on_an_unlinked_volume_file_is_detached(pool: Pool, scratch: Path) -> None:
    pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    vol = pool.mount("v", mnt)
    # simulate a crash of something outside the engine: the row and file vanish under it
    with pool.db.transaction() as tx:
        tx.execute("DELETE FROM volumes WHERE name='v'")
    vol.path.unlink()
    lines = pool.reconcile()
    assert any("stale" in line for line in lines)
    assert mounts.mount_at(mnt) is None
    assert vol.device not in loop.backing_files()
    assert loop.under(pool.mountpoint) == {}


def test_snapshot_mode_is_restored_and_missing_files_reported(pool: Pool) -> None:
    pool.create_volume("v", 64 * MiB, mode=VolumeMode.BLOCK)
    snap = pool.create_snapshot("v", "s")
    os.chmod(snap.path, 0o644)
    pool.create_volume("gone", 64 * MiB, mode=VolumeMode.BLOCK)
    pool.volume_path("gone").unlink()
    lines = pool.reconcile()
    assert snap.path.stat().st_mode & 0o777 == 0o444
    assert any("gone" in line and "missing" in line for line in lines)
    assert pool.get_volume("gone").name == "gone"  # reported, never silently dropped


def test_recovery_refuses_a_pool_that_is_not_mounted(pool: Pool) -> None:
    """An empty mount point must never read as "every volume file was deleted"."""
    # lazy: the pool's database stays open, yet the mount point is empty from now on
    subprocess.run(["umount", "--lazy", str(pool.mountpoint)], check=True)
    with pytest.raises(FailedPrecondition):
        pool.reconcile()
