"""Damaged objects in a repository on a real S3 server (SeaweedFS): the same rules as on a
directory (format §9.1) -- listing, prune, gc and verify go on around one flipped byte in
one manifest or one chunk, quarantine keeps the bytes under ``quarantine/``, gc deletes no
chunk while a manifest cannot be read, ``forget`` removes one backup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.backup import extents
from statehold.backup.collecting import forget, gc, prune
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository, manifest_key, quarantine_key
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.verifying import verify
from tests.unit.backup.damage import damage_chunk, damage_manifest, swap_chunk_content
from tests.unit.backup.helpers import MiB, same_bytes, write_image


def image(scratch: Path, name: str) -> Path:
    return write_image(scratch / f"{name}.img", 3 * MiB, [(0, os.urandom(3 * MiB))])


def test_a_damaged_manifest_on_s3_is_reported_quarantined_and_forgotten(
        s3_config: S3Config, scratch: Path) -> None:
    repo = Repository.init(S3Store(s3_config), "pw")
    a = create_backup(repo, image(scratch, "a"), volume="p/a")
    b_img = image(scratch, "b")
    b1 = create_backup(repo, b_img, volume="p/b")
    bad = damage_manifest(repo, a.backup_id)
    reopened = Repository.open(S3Store(s3_config), "pw")
    listing = reopened.scan()
    assert [m.backup_id for m in listing.manifests] == [b1.backup_id]
    assert [(d.backup_id, d.state) for d in listing.damaged] == [(a.backup_id, "damaged")]

    b2 = create_backup(reopened, b_img, volume="p/b")
    result = prune(reopened, Policy(keep_last=1))
    assert result.removed == [b1.backup_id]
    assert [(d.backup_id, d.state) for d in result.damaged] == [(a.backup_id, "quarantined")]
    assert reopened.store.get(quarantine_key(manifest_key(a.backup_id))) == bad
    collected = gc(reopened, grace=0)
    assert collected.chunks_deleted == 0 and collected.chunks_kept_unknown == 3  # a's chunks

    forget(reopened, a.backup_id)
    assert gc(reopened, grace=0).chunks_deleted == 3
    assert verify(reopened, deep=True).ok
    restore_image(reopened, b2.backup_id, scratch / "b.out")
    assert same_bytes(b_img, scratch / "b.out")


def test_deep_verify_on_s3_names_damaged_chunks_and_the_next_backup_mends_them(
        s3_config: S3Config, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository.init(S3Store(s3_config), "pw")
    img = image(scratch, "a")
    first = create_backup(repo, img, volume="p/a")
    flipped, swapped = [cid for _, cid in first.entries()][:2]
    damage_chunk(repo, flipped)
    swap_chunk_content(repo, swapped, b"other bytes")
    report = verify(repo, deep=True, quarantine=True)
    found = {p.name: p for p in report.problems}
    assert set(found) == {flipped.hex(), swapped.hex()}
    assert "authentication failed" in found[flipped.hex()].detail
    assert f"got 11 bytes with id {repo.codec.chunk_id(b'other bytes').hex()}" in found[swapped.hex()].detail
    assert all(p.quarantined == quarantine_key(chunk_key(bytes.fromhex(p.name))) for p in report.problems)

    monkeypatch.setattr(extents, "changed_ranges", lambda old, new: [])  # an idle volume
    second = create_backup(repo, img, volume="p/a", parent=Parent(first, img))
    assert second.stats.chunks_new == 2 and second.stats.bytes_read == 2 * MiB
    assert verify(repo, deep=True).ok
    restore_image(repo, first.backup_id, scratch / "first.out")
    assert same_bytes(img, scratch / "first.out")
