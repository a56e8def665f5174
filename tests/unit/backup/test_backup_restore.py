"""Backup and restore of image files on a directory store: round trip, sparseness, dedup,
corruption and missing chunks, locks, concurrent backups."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from statehold.backup.collecting import gc, prune
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup, latest_backup
from statehold.backup.locks import Lock
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.store import MemoryStore
from statehold.backup.verifying import verify
from statehold.errors import Aborted, AlreadyExists, Corrupt, FailedPrecondition, NotFound

from .helpers import MiB, allocated, mixed_image, same_bytes, write_image


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(DirectoryStore(tmp_path / "repo"), "pw")


def test_full_backup_restores_the_same_bytes_sparsely(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "vol.img")
    seen: list[tuple[int, int]] = []
    m = create_backup(repo, img, volume="p/vol", progress=lambda d, t: seen.append((d, t)))
    assert m.size == img.stat().st_size
    # random (2 chunks), text (2 chunks), tail (1 chunk); written zeros and holes are not stored
    assert len(m) == 5 and m.stats.chunks_new == 5
    assert seen[-1][0] == seen[-1][1] == m.stats.bytes_read
    out = tmp_path / "restored.img"
    restore_image(repo, m.backup_id, out)
    assert same_bytes(img, out)
    assert allocated(out) <= 6 * MiB  # the written-zero MiB and the holes stay holes


def test_identical_content_is_stored_once_across_volumes(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "a.img")
    first = create_backup(repo, img, volume="p/a")
    again = create_backup(repo, img, volume="p/a")
    other = create_backup(repo, img, volume="p/b")
    assert first.stats.chunks_new == 5
    assert again.stats.chunks_new == 0 and other.stats.chunks_new == 0
    assert sum(1 for _ in repo.store.list("chunks/")) == 5
    assert latest_backup(repo, "p/a") == again


def test_restore_refuses_an_existing_target_and_a_volume_with_data(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "a.img")
    m = create_backup(repo, img, volume="p/a")
    with pytest.raises(AlreadyExists):
        restore_image(repo, m.backup_id, img)
    with pytest.raises(FailedPrecondition, match="already holds data"):
        restore_image(repo, m.backup_id, img, existing=True)
    blank = write_image(tmp_path / "blank.img", m.size + MiB, [])
    restore_image(repo, m.backup_id, blank, existing=True)
    with open(blank, "rb") as f:
        assert f.read(m.size) == img.read_bytes()


def test_a_corrupted_chunk_fails_restore_naming_it_and_leaves_no_target(repo: Repository,
                                                                         tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "a.img")
    m = create_backup(repo, img, volume="p/a")
    victim = list(m.entries())[2][1]
    path = Path(repo.store.describe().removeprefix("dir://")) / chunk_key(victim)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    out = tmp_path / "out.img"
    with pytest.raises(Corrupt, match=chunk_key(victim)):
        restore_image(repo, m.backup_id, out)
    assert not out.exists() and not (tmp_path / "out.img.partial").exists()
    report = verify(repo, deep=True)
    assert [(p.what, p.name, p.backups) for p in report.problems] == [("corrupt", victim.hex(),
                                                                        (m.backup_id,))]
    assert verify(repo).ok  # quick verify only checks presence


def test_a_failed_restore_into_a_volume_leaves_it_blank(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "a.img")
    m = create_backup(repo, img, volume="p/a")
    victim = list(m.entries())[-1][1]
    repo.store.delete(chunk_key(victim))
    blank = write_image(tmp_path / "blank.img", m.size, [])
    with pytest.raises(NotFound, match=victim.hex()):
        restore_image(repo, m.backup_id, blank, existing=True)
    assert allocated(blank) == 0


def test_verify_lists_every_backup_a_missing_chunk_breaks(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "a.img")
    b1 = create_backup(repo, img, volume="p/a")
    b2 = create_backup(repo, img, volume="p/b")
    victim = next(iter(b1.entries()))[1]
    repo.store.delete(chunk_key(victim))
    for deep in (False, True):
        report = verify(repo, deep=deep)
        assert not report.ok
        assert report.affected() == sorted([b1.backup_id, b2.backup_id])
        assert report.problems[0].what == "missing" and report.problems[0].name == victim.hex()


def test_concurrent_backups_of_different_volumes_are_safe(repo: Repository, tmp_path: Path) -> None:
    imgs = [mixed_image(tmp_path / f"v{i}.img", seed=i) for i in range(4)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = create_backup(repo, imgs[i], volume=f"p/v{i}", workers=3).backup_id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert verify(repo, deep=True).ok
    for i, bid in results.items():
        out = tmp_path / f"r{i}.img"
        restore_image(repo, bid, out)
        assert same_bytes(imgs[i], out)


def test_gc_waits_for_running_backups_through_the_lock(repo: Repository) -> None:
    with Lock(repo, "shared"), pytest.raises(Aborted, match="busy"):
        gc(repo)
    with Lock(repo, "exclusive"), pytest.raises(Aborted):
        Lock(repo, "shared").acquire()
    assert list(repo.store.list("locks/")) == []


def test_prune_then_gc_frees_only_unreferenced_chunks_past_grace(tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repository.init(store, "pw")
    a = mixed_image(tmp_path / "a.img", seed=3)
    b = write_image(tmp_path / "b.img", 4 * MiB, [(0, b"other data" * 50000)])
    old = create_backup(repo, b, volume="p/x")
    keep = create_backup(repo, a, volume="p/x")
    result = prune(repo, Policy(keep_last=1))
    assert result.removed == [old.backup_id]
    assert repo.backup_ids() == [keep.backup_id]
    fresh = gc(repo)
    assert fresh.chunks_deleted == 0 and fresh.chunks_in_grace == len(old)
    for info in list(store.list("chunks/")):
        store.set_mtime(info.key, info.mtime - 7200)
    aged = gc(repo)
    assert aged.chunks_deleted == len(old) and aged.chunks_referenced == len(keep)
    assert verify(repo, deep=True).ok
    restore_image(repo, keep.backup_id, tmp_path / "out.img")
    assert same_bytes(a, tmp_path / "out.img")
