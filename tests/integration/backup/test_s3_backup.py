"""Backup, incremental dedup, verify and restore through a real S3 server (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.backup.collecting import gc, prune
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.verifying import verify
from statehold.errors import PermissionDenied
from tests.unit.backup.helpers import mixed_image, same_bytes


def test_backup_and_restore_through_s3(s3_config: S3Config, scratch: Path) -> None:
    store = S3Store(s3_config)
    repo = Repository.init(store, "pw")
    img = mixed_image(scratch / "v.img")
    first = create_backup(repo, img, volume="p/v")
    again = create_backup(repo, img, volume="p/v")
    assert first.stats.chunks_new == 5 and again.stats.chunks_new == 0
    reopened = Repository.open(S3Store(s3_config), "pw")
    assert verify(reopened, deep=True).ok
    restore_image(reopened, again.backup_id, scratch / "out.img")
    assert same_bytes(img, scratch / "out.img")
    assert prune(reopened, Policy(keep_last=1)).removed == [first.backup_id]
    assert gc(reopened, grace=0).chunks_deleted == 0  # the kept backup still needs every chunk
    with pytest.raises(PermissionDenied):
        Repository.open(store, "wrong")
