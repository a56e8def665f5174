"""Incremental backups of real engine snapshots (XFS reflink, FIEMAP diff)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.verifying import verify
from statehold.engine.pool import Pool
from statehold.engine.types import VolumeMode
from tests.unit.backup.helpers import same_bytes

pytestmark = pytest.mark.root
MiB = 1 << 20


def test_incremental_reads_only_changed_chunks_and_restores_exactly(pool: Pool, scratch: Path) -> None:
    vol = pool.create_volume("data", 256 * MiB, mode=VolumeMode.BLOCK, fs=None)
    rnd = random.Random(7)
    with open(vol.path, "r+b") as f:
        for i in range(0, 192, 1):  # 192 MiB of data (mixed), 64 MiB hole at the end
            f.seek(i * MiB)
            f.write(os.urandom(MiB) if i % 3 else (b"text %d\n" % i) * (MiB // 8))
        os.fsync(f.fileno())
    repo = Repository.init(DirectoryStore(scratch / "repo"), "pw")
    snap1 = pool.create_snapshot("data", "s1", freeze=False)
    full = create_backup(repo, snap1.path, volume=vol.id, snapshot=snap1.id)
    assert full.stats.bytes_read == 192 * MiB

    with open(vol.path, "r+b") as f:  # 10 scattered 64 KiB writes, one past the old data
        for off in [rnd.randrange(0, 190) * MiB + 64 * 1024 for _ in range(9)] + [200 * MiB]:
            f.seek(off)
            f.write(os.urandom(64 * 1024))
        os.fsync(f.fileno())
    snap2 = pool.create_snapshot("data", "s2", freeze=False)
    inc = create_backup(repo, snap2.path, volume=vol.id, snapshot=snap2.id,
                        parent=Parent(full, snap1.path))
    assert inc.parent == full.backup_id
    assert inc.stats.bytes_read <= 10 * MiB  # at most the 10 touched chunks, not 192 MiB
    assert len(inc) == len(full) + 1

    # each manifest is complete: the full one still restores snap1, the incremental snap2
    for m, snap in ((full, snap1), (inc, snap2)):
        out = scratch / f"{m.backup_id}.img"
        restore_image(repo, m.backup_id, out)
        assert same_bytes(out, snap.path)
    assert verify(repo, deep=True).ok


def test_parent_snapshot_gone_means_a_full_backup(pool: Pool, scratch: Path) -> None:
    vol = pool.create_volume("v2", 16 * MiB, mode=VolumeMode.BLOCK, fs=None)
    with open(vol.path, "r+b") as f:
        f.write(os.urandom(8 * MiB))
    repo = Repository.init(DirectoryStore(scratch / "repo"), "pw")
    s1 = pool.create_snapshot("v2", "a1", freeze=False)
    first = create_backup(repo, s1.path, volume=vol.id)
    pool.delete_snapshot("a1")
    s2 = pool.create_snapshot("v2", "a2", freeze=False)
    second = create_backup(repo, s2.path, volume=vol.id, parent=Parent(first, s1.path))
    assert second.parent is None and second.stats.bytes_read == 8 * MiB
    assert second.stats.chunks_new == 0  # all deduplicated
