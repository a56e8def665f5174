"""A mounted XFS volume backed up (fsfreeze + reflink snapshot) and restored into a new
volume that mounts with the same files: the use case, through the engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.repository import Repository
from statehold.backup.volumes import backup_volume, restore_volume
from statehold.engine.pool import Pool
from statehold.errors import AlreadyExists

pytestmark = pytest.mark.root


def test_mounted_volume_backup_restores_into_a_new_volume_that_mounts(pool: Pool, scratch: Path) -> None:
    pool.create_volume("db", 128 << 20)
    live = scratch / "live"
    live.mkdir()
    pool.mount("db", live)
    payload = os.urandom(3 << 20)
    (live / "table.dat").write_bytes(payload)
    repo = Repository.init(DirectoryStore(scratch / "repo"), "pw")
    first = backup_volume(repo, pool, "db")
    (live / "wal.log").write_text("commit 42\n")
    second = backup_volume(repo, pool, "db")
    assert second.parent_id == first.backup_id
    assert second.bytes_read < first.bytes_read
    pool.unmount("db", live)  # restored XFS shares the original's UUID: one mounted at a time
    pool.detach("db")

    restored = restore_volume(repo, second.backup_id, pool, "db-copy")
    assert restored.size == pool.get_volume("db").size and pool.is_formatted("db-copy")
    target = scratch / "copy"
    target.mkdir()
    pool.mount("db-copy", target)
    try:
        assert (target / "table.dat").read_bytes() == payload
        assert (target / "wal.log").read_text() == "commit 42\n"
    finally:
        pool.unmount("db-copy", target)
        pool.detach("db-copy")
    with pytest.raises(AlreadyExists):
        restore_volume(repo, second.backup_id, pool, "db-copy")
    assert [s.name for s in pool.list_snapshots("db")] == [second.snapshot]
    assert second.manifest.snapshot == f"{pool.name}/{second.snapshot}"
