"""The path every other area builds on: pool, volume, mount, snapshot, clone, expand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.engine.pool import Pool
from statehold.engine.types import GrowResult, MiB, Source, SourceKind

pytestmark = pytest.mark.root


def test_snapshot_and_clone_hold_the_data_of_their_instant(pool: Pool, scratch: Path) -> None:
    pool.create_volume("data", 300 * MiB)
    mnt = scratch / "mnt"
    vol = pool.mount("data", mnt)
    assert vol.device is not None and vol.device.startswith("/dev/loop")
    assert vol.mounts == (str(mnt),)
    (mnt / "f").write_bytes(b"old" * 1000)
    snap = pool.create_snapshot("data", "snap")
    assert snap.frozen
    (mnt / "f").write_bytes(b"new" * 1000)
    pool.create_volume("copy", 300 * MiB, source=Source(SourceKind.SNAPSHOT, "snap"))
    clone_mnt = scratch / "clone"
    pool.mount("copy", clone_mnt)
    assert (clone_mnt / "f").read_bytes() == b"old" * 1000
    assert (mnt / "f").read_bytes() == b"new" * 1000


def test_online_expand_of_xfs_shows_in_statvfs(pool: Pool, scratch: Path) -> None:
    pool.create_volume("grow", 300 * MiB)
    mnt = scratch / "mnt"
    pool.mount("grow", mnt)
    before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    result = pool.expand("grow", 600 * MiB)
    assert result.grow is GrowResult.ONLINE
    assert result.volume.size == 600 * MiB
    after = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    assert after > before + 250 * MiB
