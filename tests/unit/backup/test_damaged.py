"""A repository with damaged objects (format §9.1): one flipped byte in one manifest or one
chunk never stops listing, prune, gc, verify or new backups; the damage is reported by
object id and reason, quarantined with its bytes kept, and gc deletes no chunk a damaged
manifest might name. ``forget`` removes one backup."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.backup import extents
from statehold.backup.collecting import forget, gc, prune
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import VERSION, Manifest
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Damaged, Repository, manifest_key, quarantine_key
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.store import MemoryStore
from statehold.backup.verifying import verify
from statehold.errors import Corrupt, NotFound

from .damage import damage_chunk, damage_manifest, swap_chunk_content
from .helpers import MiB, same_bytes, write_image


@pytest.fixture(params=["memory", "directory"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    store = MemoryStore() if request.param == "memory" else DirectoryStore(tmp_path / "repo")
    return Repository.init(store, "pw")


def image(tmp_path: Path, name: str, chunks: int = 3) -> Path:
    """An image of ``chunks`` MiB of random data: chunks no other image shares."""
    return write_image(tmp_path / f"{name}.img", chunks * MiB, [(0, os.urandom(chunks * MiB))])


def chunk_keys(repo: Repository) -> set[str]:
    return {i.key for i in repo.store.list("chunks/")}


@pytest.fixture
def unchanged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The engine's diff says nothing changed since the parent: incrementals copy every
    entry of the parent unread (as for an idle volume)."""
    monkeypatch.setattr(extents, "changed_ranges", lambda old, new: [])
    yield


def test_listing_yields_the_readable_manifests_and_names_the_damaged_one(repo: Repository,
                                                                         tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    b = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    damage_manifest(repo, a.backup_id)
    assert [m.backup_id for m in repo.manifests()] == [b.backup_id]
    listing = repo.scan()
    assert [m.backup_id for m in listing.manifests] == [b.backup_id]
    [d] = listing.damaged
    assert (d.backup_id, d.key, d.state) == (a.backup_id, manifest_key(a.backup_id), "damaged")
    assert "authentication failed" in d.reason and manifest_key(a.backup_id) in d.reason
    assert repo.examine(a.backup_id) == d
    assert repo.examine(b.backup_id) == b


def test_prune_quarantines_a_damaged_manifest_keeps_its_bytes_and_prunes_the_rest(
        repo: Repository, tmp_path: Path) -> None:
    img = image(tmp_path, "a")
    old, new = create_backup(repo, img, volume="p/a"), create_backup(repo, img, volume="p/a")
    other = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    bad = damage_manifest(repo, other.backup_id)
    result = prune(repo, Policy(keep_last=1))
    assert result.removed == [old.backup_id] and list(result.kept) == [new.backup_id]
    [d] = result.damaged
    assert (d.backup_id, d.state, d.key) == (other.backup_id, "quarantined",
                                              quarantine_key(manifest_key(other.backup_id)))
    assert repo.store.get(d.key) == bad  # kept for inspection, byte for byte
    assert not repo.store.exists(manifest_key(other.backup_id))
    assert repo.backup_ids() == [new.backup_id]  # no longer listed among the backups
    assert repo.scan().damaged == [d]  # but still known, with its reason
    with pytest.raises(Corrupt, match="quarantined"):
        repo.load_manifest(other.backup_id)
    assert repo.resolve(other.backup_id[-8:]) == other.backup_id  # forget can name it


def test_a_dry_run_prune_quarantines_nothing(repo: Repository, tmp_path: Path) -> None:
    m = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    damage_manifest(repo, m.backup_id)
    result = prune(repo, Policy(keep_last=1), dry_run=True)
    assert [d.state for d in result.damaged] == ["damaged"]
    assert repo.store.exists(manifest_key(m.backup_id))


def test_gc_deletes_no_chunk_while_a_manifest_cannot_be_read(repo: Repository, tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    b = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    forget(repo, a.backup_id)  # a's chunks are unreferenced now
    damage_manifest(repo, b.backup_id)  # and nobody can tell which chunks b names
    before = chunk_keys(repo)
    r = gc(repo, grace=0)
    assert r.chunks_deleted == 0 and chunk_keys(repo) == before
    assert r.chunks_kept_unknown == len(before) == 6
    assert [(d.backup_id, d.state) for d in r.damaged] == [(b.backup_id, "quarantined")]
    again = gc(repo, grace=0)  # quarantined, it still counts: its chunks are still unknown
    assert again.chunks_deleted == 0 and [d.backup_id for d in again.damaged] == [b.backup_id]
    forget(repo, b.backup_id)  # the user gives it up: now every chunk is provably unreferenced
    done = gc(repo, grace=0)
    assert done.chunks_deleted == 6 and not done.damaged and not chunk_keys(repo)


def test_a_newer_manifest_is_not_quarantined_and_keeps_every_chunk(repo: Repository,
                                                                   tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    forget(repo, a.backup_id)
    head = json.dumps({"format": "statehold-manifest", "version": VERSION + 1,
                       "backup_id": "x"}).encode()
    newer = "20990101T000000Z-00000000"
    repo.put_blob(manifest_key(newer), struct.pack(">I", len(head)) + head)
    r = gc(repo, grace=0)
    assert r.chunks_deleted == 0 and r.chunks_kept_unknown == 3
    [d] = r.damaged
    assert d.state == "unsupported" and "newer" in d.reason
    assert repo.store.exists(manifest_key(newer))  # a newer writer's backup is not damage


def test_forget_removes_one_backup_and_its_incremental_child_stays_whole(
        repo: Repository, tmp_path: Path, unchanged: None) -> None:
    img = image(tmp_path, "a")
    parent = create_backup(repo, img, volume="p/a")
    child = create_backup(repo, img, volume="p/a", parent=Parent(parent, img))
    assert child.parent == parent.backup_id and child.stats.bytes_read == 0  # all copied
    other = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    result = forget(repo, parent.backup_id)
    assert result.removed == (manifest_key(parent.backup_id),)
    assert repo.backup_ids() == sorted([child.backup_id, other.backup_id])
    assert gc(repo, grace=0).chunks_deleted == 0  # the child names every chunk it needs
    restore_image(repo, child.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
    assert verify(repo, deep=True).ok
    with pytest.raises(NotFound):
        forget(repo, parent.backup_id)


def test_forget_removes_a_damaged_and_a_quarantined_backup(repo: Repository, tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    b = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    damage_manifest(repo, a.backup_id)
    damage_manifest(repo, b.backup_id)
    repo.quarantine(manifest_key(b.backup_id))
    assert forget(repo, a.backup_id).removed == (manifest_key(a.backup_id),)
    assert forget(repo, b.backup_id).removed == (quarantine_key(manifest_key(b.backup_id)),)
    assert repo.scan().damaged == [] and repo.backup_ids() == []
    with pytest.raises(NotFound):
        repo.examine(b.backup_id)


def test_quarantine_finishes_a_move_interrupted_after_the_copy(repo: Repository, tmp_path: Path) -> None:
    m = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    key = manifest_key(m.backup_id)
    repo.store.put(quarantine_key(key), repo.store.get(key))  # crashed before the delete
    assert repo.quarantine(key) == quarantine_key(key)
    assert not repo.store.exists(key)
    assert repo.quarantine(key) == quarantine_key(key)  # and again: idempotent


def test_verify_names_a_damaged_manifest_and_with_quarantine_moves_it(repo: Repository,
                                                                      tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    b = create_backup(repo, image(tmp_path, "b"), volume="p/b")
    damage_manifest(repo, a.backup_id)
    report = verify(repo)
    assert report.backups == 1 and report.affected() == [a.backup_id]
    [p] = report.problems
    assert (p.what, p.name, p.quarantined) == ("manifest", a.backup_id, "")
    assert "authentication failed" in p.detail
    moved = verify(repo, quarantine=True)
    assert [(p.what, p.quarantined) for p in moved.problems] == [
        ("manifest", quarantine_key(manifest_key(a.backup_id)))]
    after = verify(repo, deep=True)
    assert [(p.what, p.name) for p in after.problems] == [("quarantined", a.backup_id)]
    assert after.backups == 1 and b.backup_id not in after.affected()


def test_deep_verify_names_a_damaged_chunk_and_the_backups_it_breaks(repo: Repository,
                                                                     tmp_path: Path) -> None:
    a = create_backup(repo, image(tmp_path, "a"), volume="p/a")
    create_backup(repo, image(tmp_path, "b"), volume="p/b")
    flipped, swapped = [cid for _, cid in a.entries()][:2]
    damage_chunk(repo, flipped)
    swap_chunk_content(repo, swapped, b"not what the id names")
    assert verify(repo).ok  # quick: every chunk is there
    report = verify(repo, deep=True)
    found = {p.name: p for p in report.problems}
    assert set(found) == {flipped.hex(), swapped.hex()}
    assert found[flipped.hex()].what == "corrupt" and found[flipped.hex()].backups == (a.backup_id,)
    assert "authentication failed" in found[flipped.hex()].detail
    assert chunk_key(flipped) in found[flipped.hex()].detail
    detail = found[swapped.hex()].detail
    assert f"expected {MiB} bytes with id {swapped.hex()}" in detail
    assert f"got 21 bytes with id {repo.codec.chunk_id(b'not what the id names').hex()}" in detail


def test_a_quarantined_chunk_is_stored_again_by_the_next_backup_which_mends_the_old_one(
        repo: Repository, tmp_path: Path, unchanged: None) -> None:
    img = image(tmp_path, "a")
    first = create_backup(repo, img, volume="p/a")
    victim = next(iter(first.entries()))[1]
    damage_chunk(repo, victim)
    report = verify(repo, deep=True, quarantine=True)
    assert [(p.name, p.quarantined) for p in report.problems] == [
        (victim.hex(), quarantine_key(chunk_key(victim)))]
    assert [p.what for p in verify(repo).problems] == ["missing"]
    # the parent's entry names a chunk no longer stored: read again, not copied
    second = create_backup(repo, img, volume="p/a", parent=Parent(first, img))
    assert second.stats.chunks_new == 1 and second.stats.bytes_read == MiB
    assert verify(repo, deep=True).ok  # the same id is whole again, for the first backup too
    restore_image(repo, first.backup_id, tmp_path / "first.img")
    assert same_bytes(img, tmp_path / "first.img")


def test_listing_reads_around_a_damaged_manifest_of_every_kind(repo: Repository, tmp_path: Path) -> None:
    """Truncated, garbage, a manifest under another backup's key: each is named, none stops
    the listing."""
    ms: list[Manifest] = [create_backup(repo, image(tmp_path, n, 1), volume=f"p/{n}") for n in "abcd"]
    store = repo.store
    store.put(manifest_key(ms[0].backup_id), store.get(manifest_key(ms[0].backup_id))[:10])
    store.put(manifest_key(ms[1].backup_id), b"garbage")
    store.put(manifest_key(ms[2].backup_id), repo.codec.encode(manifest_key(ms[2].backup_id),
                                                               ms[3].encode()))
    listing = repo.scan()
    assert [m.backup_id for m in listing.manifests] == [ms[3].backup_id]
    reasons = {d.backup_id: d.reason for d in listing.damaged}
    assert "not a Statehold blob" in reasons[ms[0].backup_id]
    assert "not a Statehold blob" in reasons[ms[1].backup_id]
    assert f"names backup {ms[3].backup_id}" in reasons[ms[2].backup_id]
    assert all(isinstance(d, Damaged) and d.state == "damaged" for d in listing.damaged)
