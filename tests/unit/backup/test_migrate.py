"""Converting a format 1 repository to format 2 in place (format §11.9): every backup
stays restorable bit for bit, a killed migration (SIGKILL) leaves a readable repository and
a repeated one finishes, and a writer that opened the repository as format 1 stops."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.migrate import migrate
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.tree import backup_tree, restore_tree
from statehold.backup.verifying import verify
from statehold.errors import Aborted

from .helpers import MiB, mixed_image, same_bytes, write_image
from .killing import kill_at


def _v1_with_backups(tmp_path: Path) -> tuple[DirectoryStore, list[tuple[Manifest, Path]], Manifest]:
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw")  # format 1
    a = mixed_image(tmp_path / "a.img")
    ma = create_backup(repo, a, volume="p/a")
    b = tmp_path / "b.img"
    shutil.copyfile(a, b)
    with open(b, "r+b") as f:
        f.seek(2 * MiB + 5000)
        f.write(random.Random(1).randbytes(300_000))
    mb = create_backup(repo, b, volume="p/a", parent=Parent(ma, a))
    c = write_image(tmp_path / "c.img", 3 * MiB, [(MiB, random.Random(2).randbytes(MiB))])
    mc = create_backup(repo, c, volume="p/c")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.bin").write_bytes(random.Random(3).randbytes(1_500_000))
    mt = backup_tree(repo, tree, volume="share")
    return store, [(ma, a), (mb, b), (mc, c)], mt


def _all_restore(repo: Repository, images: list[tuple[Manifest, Path]], mt: Manifest, out: Path) -> None:
    out.mkdir()
    for m, img in images:
        restore_image(repo, m.backup_id, out / m.backup_id)
        assert same_bytes(img, out / m.backup_id)
    restore_tree(repo, mt.backup_id, out / "tree")
    assert (out / "tree" / "f.bin").read_bytes() == random.Random(3).randbytes(1_500_000)


def test_migrate_keeps_every_backup_restorable_bit_for_bit(tmp_path: Path) -> None:
    store, images, mt = _v1_with_backups(tmp_path)
    chunks = sum(1 for _ in store.list("chunks/"))
    repo = Repository.open(store, "pw")
    r = migrate(repo, pack_size=MiB)
    assert r.converted and r.chunks_packed == chunks == r.chunks_removed and r.packs >= 3
    assert json.loads(store.get("config"))["version"] == 2
    assert not list(store.list("chunks/"))
    assert list(store.list(PACK_PREFIX)) and list(store.list(INDEX_PREFIX))
    fresh = Repository.open(store, "pw")
    chunkstore.use_cache(fresh, tmp_path / "fresh-cache")
    assert fresh.config.version == 2 and fresh.chunk_size == 1 << 20  # the chunk size stays
    _all_restore(fresh, images, mt, tmp_path / "out")
    assert verify(fresh, deep=True).ok
    again = create_backup(fresh, images[0][1], volume="p/a")  # dedupes against the packed chunks
    assert again.stats.chunks_new == 0
    second = migrate(fresh)
    assert not second.converted and second.chunks_packed == 0


CHILD = """
    from statehold.backup.migrate import migrate
    migrate(repo, pack_size=1 << 20, fault=fault)
"""


@pytest.mark.parametrize(("point", "nth", "version"), [("pack-stored", 2, 1), ("index-stored", 1, 1),
                                                       ("converted", 1, 2)])
def test_a_killed_migration_leaves_a_readable_repository_and_a_rerun_finishes(
        tmp_path: Path, point: str, nth: int, version: int) -> None:
    store, images, mt = _v1_with_backups(tmp_path)
    kill_at(point, nth, tmp_path / "repo", CHILD)
    repo = Repository.open(store, "pw")
    assert repo.config.version == version
    _all_restore(repo, images, mt, tmp_path / "out1")
    migrate(repo)
    assert repo.config.version == 2 and not list(store.list("chunks/"))
    fresh = Repository.open(store, "pw")
    chunkstore.use_cache(fresh, tmp_path / "fresh-cache")
    _all_restore(fresh, images, mt, tmp_path / "out2")
    assert verify(fresh, deep=True).ok


def test_a_writer_that_opened_format_1_stops_after_a_migration(tmp_path: Path) -> None:
    store, images, _mt = _v1_with_backups(tmp_path)
    old = Repository.open(store, "pw")
    migrate(Repository.open(store, "pw"))
    with pytest.raises(Aborted, match="converted to format 2"):
        create_backup(old, images[0][1], volume="p/a")
    assert not list(store.list("chunks/"))
