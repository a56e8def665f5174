"""File-tree backups (shared volumes): round trip of content and metadata, dedup, reuse of
unchanged files, corruption handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.backup.collecting import gc
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository
from statehold.backup.store import MemoryStore
from statehold.backup.tree import backup_tree, restore_tree
from statehold.backup.verifying import verify
from statehold.errors import AlreadyExists, Corrupt, InvalidArgument

MiB = 1 << 20


def make_tree(root: Path) -> None:
    (root / "uploads" / "2026").mkdir(parents=True)
    (root / "uploads" / "2026" / "a.jpg").write_bytes(os.urandom(3 * MiB + 17))
    (root / "uploads" / "copy.jpg").write_bytes((root / "uploads" / "2026" / "a.jpg").read_bytes())
    (root / "empty").write_bytes(b"")
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(5 * MiB)
        f.seek(4 * MiB)
        f.write(b"end")
    (root / "link").symlink_to("uploads/copy.jpg")
    os.chmod(root / "uploads" / "copy.jpg", 0o640)
    os.utime(root / "empty", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_size if p.is_file() else 0,
                                             st.st_mtime_ns if not p.is_symlink() else 0, body)
    return out


def test_tree_round_trips_content_modes_times_and_links(tmp_path: Path) -> None:
    repo = Repository.init(MemoryStore(), "pw")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = backup_tree(repo, src, volume="shared/site")
    assert m.kind == "tree"
    assert m.stats.chunks_new == 5  # a.jpg's 4 chunks (copy.jpg dedups) + sparse.bin's last one
    restore_tree(repo, m.backup_id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)
    with pytest.raises(AlreadyExists):
        restore_tree(repo, m.backup_id, tmp_path / "out")
    assert verify(repo, deep=True).ok


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    repo = Repository.init(MemoryStore(), "pw")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    first = backup_tree(repo, src, volume="shared/site")
    (src / "new.txt").write_text("hello\n" * 1000)
    second = backup_tree(repo, src, volume="shared/site", parent=first)
    assert second.parent == first.backup_id
    assert second.stats.bytes_read == 6000 and second.stats.chunks_new == 1
    restore_tree(repo, second.backup_id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert gc(repo, grace=0).chunks_deleted == 0


def test_a_corrupt_chunk_fails_the_tree_restore_and_leaves_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repository.init(store, "pw")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = backup_tree(repo, src, volume="shared/site")
    victim = next(i.key for i in store.list("chunks/"))
    store.put(victim, store.get(victim)[:-1] + b"\x00")
    with pytest.raises(Corrupt, match=victim):
        restore_tree(repo, m.backup_id, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert chunk_key(bytes.fromhex(victim.rpartition("/")[2])) == victim


def test_an_image_backup_is_not_restored_as_a_tree(tmp_path: Path) -> None:
    from statehold.backup.imagebackup import create_backup

    repo = Repository.init(MemoryStore(), "pw")
    img = tmp_path / "img"
    img.write_bytes(b"x" * 1000)
    m = create_backup(repo, img, volume="p/v")
    with pytest.raises(InvalidArgument):
        restore_tree(repo, m.backup_id, tmp_path / "out")
