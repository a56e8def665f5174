"""Backups of a volume in a ``subvolume`` pool (btrfs, issue 14) into a format 2 repository.

In that layout a snapshot is a read-only btrfs subvolume snapshot, not a reflinked file, so
the incremental backup's FIEMAP diff compares two files in two different subvolumes. What
a user relies on: the incremental reads and stores about the bytes that changed (not the
whole volume), and both backups restore, into new volumes of the same pool, bit for bit.
Real parts: a btrfs pool on two loop-attached images made by the engine, the volume
written through its own loop device (as a block-mode pod writes it), a directory store.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.repository import Repository
from statehold.backup.volumes import backup_volume, restore_volume
from statehold.engine import subvolume
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, VolumeMode

pytestmark = pytest.mark.root

SIZE = 64 * MiB
WRITTEN = 40 * MiB
"""The first backup's data: the rest of the volume was never written (a hole)."""


@pytest.fixture
def pool(node: Node) -> Pool:
    """A btrfs pool of layout ``subvolume`` on two sparse images (the engine formats them)."""
    home = node.home
    return node.create_pool(PoolSpec(
        name="svb", images=(str(home / "disks" / "svb-0.img"), str(home / "disks" / "svb-1.img")),
        image_size=GiB, layout="subvolume"))


def _write_device(device: str, writes: list[tuple[int, bytes]]) -> None:
    """Write through the volume's block device and flush it, as an application would."""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for offset, data in writes:
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = size
        while left:
            block = fh.read(min(left, 4 * MiB))
            assert block, f"{path} is shorter than {size} bytes"
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def test_incremental_backup_of_a_subvolume_pool_reads_the_change_and_both_restore(
        pool: Pool, scratch: Path) -> None:
    assert pool.layout.name == "subvolume" and pool.fs == "btrfs"
    pool.create_volume("db", SIZE, mode=VolumeMode.BLOCK, fs=None)
    device = pool.attach("db")
    rng = random.Random(13)
    image = bytearray(SIZE)
    try:
        first = [(off, rng.randbytes(MiB)) for off in range(0, WRITTEN, MiB)]
        _write_device(device, first)
        for off, data in first:
            image[off:off + len(data)] = data
        image_full = hashlib.sha256(image).hexdigest()

        repo = Repository.init(DirectoryStore(scratch / "repo"), "pw", version=2)
        cs = repo.chunk_size
        full = backup_volume(repo, pool, "db")
        assert full.parent_id is None
        assert full.bytes_read == WRITTEN  # the never-written tail is a hole: not read
        assert subvolume.is_subvolume(pool.layout.snapshot_entry(full.snapshot))

        # the change set: 4 KiB..64 KiB writes in 12 distinct chunks (one in the old hole)
        # and one 4 KiB rewrite of identical bytes, which btrfs still writes anew
        chunks = [*rng.sample(range(WRITTEN // cs), 11), (WRITTEN + 8 * MiB) // cs]
        change = [(c * cs + rng.randrange(0, cs // 2, 4096), rng.randbytes(rng.choice((4, 16, 64)) * 1024))
                  for c in chunks]
        same = next(c for c in range(WRITTEN // cs) if c not in chunks) * cs
        change.append((same, bytes(image[same:same + 4096])))
        _write_device(device, change)
        for off, data in change:
            image[off:off + len(data)] = data
        image_inc = hashlib.sha256(image).hexdigest()
        changed_bytes = sum(len(d) for _, d in change)
        touched = len(chunks) + 1

        inc = backup_volume(repo, pool, "db")
        assert inc.parent_id == full.backup_id
        stats = inc.manifest.stats
        # read: the chunks holding a changed block (at most one chunk each), not the volume
        assert changed_bytes <= stats.bytes_read <= touched * cs
        assert stats.bytes_read < WRITTEN // 10
        # stored: the 12 chunks whose bytes changed; the identical rewrite deduplicates
        assert stats.chunks_new == len(chunks)
        assert stats.bytes_new <= len(chunks) * cs
        # the superseded snapshot is gone; the incremental's is the next parent
        assert [s.name for s in pool.list_snapshots("db")] == [inc.snapshot]
    finally:
        pool.detach("db")

    for name, result, want in (("r-full", full, image_full), ("r-inc", inc, image_inc)):
        restored = restore_volume(repo, result.backup_id, pool, name)
        assert restored.size == SIZE
        assert subvolume.is_subvolume(pool.layout.volume_entry(name))
        assert _digest(restored.path, SIZE) == want, f"{name} differs from the volume's bytes"


def test_mounted_volume_of_a_subvolume_pool_backs_up_frozen_and_restores_its_files(
        pool: Pool, scratch: Path) -> None:
    """The filesystem case: each backup's snapshot freezes the mounted XFS around the
    subvolume snapshot ioctl; both backups restore into volumes that mount with the files
    as they were at each backup."""
    pool.create_volume("fsv", 320 * MiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
    live = scratch / "live"
    live.mkdir()
    pool.mount("fsv", live)
    rng = random.Random(31)
    try:
        table = rng.randbytes(24 * MiB)
        (live / "table.dat").write_bytes(table)
        (live / "wal.log").write_text("commit 1\n")
        repo = Repository.init(DirectoryStore(scratch / "repo"), "pw", version=2)
        full = backup_volume(repo, pool, "fsv")
        assert full.bytes_read >= len(table)

        with open(live / "table.dat", "r+b") as fh:  # 8 pages rewritten in place
            for off in rng.sample(range(0, len(table), 4096), 8):
                fh.seek(off)
                fh.write(rng.randbytes(4096))
            fh.flush()
            os.fsync(fh.fileno())
        table_inc = (live / "table.dat").read_bytes()
        (live / "wal.log").write_text("commit 1\ncommit 2\n")
        inc = backup_volume(repo, pool, "fsv")
        assert inc.parent_id == full.backup_id
        # the 8 pages, the log and XFS's own metadata: chunks, not the 24 MiB file again
        assert inc.bytes_read < full.bytes_read // 4
        assert inc.manifest.stats.chunks_new < full.manifest.stats.chunks_new // 4
    finally:
        pool.unmount("fsv", live)
        pool.detach("fsv")

    # the restored XFS filesystems share the original's UUID: one mounted at a time
    for name, result, want_table, want_wal in (
            ("fr-full", full, table, "commit 1\n"), ("fr-inc", inc, table_inc, "commit 1\ncommit 2\n")):
        restore_volume(repo, result.backup_id, pool, name)
        target = scratch / name
        target.mkdir()
        pool.mount(name, target)
        try:
            same = (target / "table.dat").read_bytes() == want_table  # no 24 MiB diff printed
            assert same, f"{name}: table.dat differs from the file at its backup"
            assert (target / "wal.log").read_text() == want_wal
        finally:
            pool.unmount(name, target)
            pool.detach(name)
