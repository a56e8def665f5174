"""Who made a backup (manifest ``origin``, format §6.2) and retention that keeps to its own:
a schedule's prune never removes a backup made by hand, nor another schedule's; manifests
written before the field read as made by hand."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from statehold.backup import manifest as manifest_mod
from statehold.backup.collecting import gc, prune
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository, manifest_key
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.store import MemoryStore
from statehold.backup.tree import backup_tree

from .helpers import MiB, same_bytes, write_image

NIGHTLY = "schedule/databases/nightly"
HOURLY = "schedule/databases/hourly"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStore(), "pw")


def image(tmp_path: Path, n: int) -> Path:
    return write_image(tmp_path / f"img-{n}", 2 * MiB, [(0, bytes([n]) * 4096 + b"x" * n)])


def test_origin_round_trips_and_is_absent_for_backups_made_by_hand(repo: Repository,
                                                                    tmp_path: Path) -> None:
    by_hand = create_backup(repo, image(tmp_path, 1), volume="p/v")
    scheduled = create_backup(repo, image(tmp_path, 2), volume="p/v", origin=NIGHTLY)
    assert repo.load_manifest(by_hand.backup_id).origin == ""
    assert repo.load_manifest(scheduled.backup_id).origin == NIGHTLY
    assert "origin" not in by_hand.header()  # byte-identical to what earlier releases wrote
    tree_dir = tmp_path / "tree"
    tree_dir.mkdir()
    (tree_dir / "f").write_bytes(b"tree")
    tree = backup_tree(repo, tree_dir, volume="shared/r/v", origin=HOURLY)
    assert repo.load_manifest(tree.backup_id).origin == HOURLY


def test_a_manifest_written_before_the_field_reads_as_made_by_hand(repo: Repository,
                                                                    tmp_path: Path) -> None:
    m = create_backup(repo, image(tmp_path, 1), volume="p/v", origin=NIGHTLY)
    plain = repo.get_blob(manifest_key(m.backup_id))
    (hlen,) = struct.unpack_from(">I", plain, 0)
    head = json.loads(plain[4:4 + hlen])
    del head["origin"]
    raw = json.dumps(head).encode()
    repo.put_blob(manifest_key(m.backup_id), struct.pack(">I", len(raw)) + raw + plain[4 + hlen:])
    old = repo.load_manifest(m.backup_id)
    assert old.origin == "" and len(old) == len(m)
    assert manifest_mod.decode(old.encode(), "k").origin == ""


def test_a_schedules_prune_removes_only_its_own_backups(repo: Repository, tmp_path: Path) -> None:
    manual = create_backup(repo, image(tmp_path, 1), volume="p/v")
    mine = [create_backup(repo, image(tmp_path, n), volume="p/v", origin=NIGHTLY) for n in (2, 3, 4)]
    other = create_backup(repo, image(tmp_path, 5), volume="p/v", origin=HOURLY)
    elsewhere = create_backup(repo, image(tmp_path, 6), volume="p/w", origin=NIGHTLY)

    result = prune(repo, Policy(keep_last=1), volume="p/v", origin=NIGHTLY)
    assert result.removed == sorted(m.backup_id for m in mine[:2])
    assert sorted(result.kept) == [mine[2].backup_id]  # only what the policy judged
    assert set(repo.backup_ids()) == {manual.backup_id, mine[2].backup_id, other.backup_id,
                                      elsewhere.backup_id}

    # the backups made by hand are a policy's only when it names them
    by_hand = prune(repo, Policy(keep_last=1), volume="p/v", origin="")
    assert by_hand.removed == [] and list(by_hand.kept) == [manual.backup_id]
    everything = prune(repo, Policy(keep_last=1), volume="p/v")
    newest = max([manual, mine[2], other], key=lambda m: (m.created, m.backup_id))
    assert repo.backup_ids() == sorted([newest.backup_id, elsewhere.backup_id])
    assert len(everything.removed) == 2


def test_gc_after_a_schedules_prune_frees_its_chunks_and_keeps_the_manual_backup_whole(
        tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repository.init(store, "pw")
    manual_img = image(tmp_path, 1)
    manual = create_backup(repo, manual_img, volume="p/v")
    old = create_backup(repo, image(tmp_path, 2), volume="p/v", origin=NIGHTLY)
    create_backup(repo, image(tmp_path, 3), volume="p/v", origin=NIGHTLY)
    assert prune(repo, Policy(keep_last=1), volume="p/v", origin=NIGHTLY).removed == [old.backup_id]
    before = sum(i.size for i in store.list("chunks/"))
    freed = gc(repo, grace=0)
    assert freed.chunks_deleted == 1 and freed.bytes_deleted > 0  # old's one unique chunk
    assert sum(i.size for i in store.list("chunks/")) == before - freed.bytes_deleted
    restore_image(repo, manual.backup_id, tmp_path / "out")
    assert same_bytes(manual_img, tmp_path / "out")
