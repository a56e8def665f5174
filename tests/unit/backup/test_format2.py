"""Format 2 (packs, index objects, the on-disk index cache): round trips of random images
and random change sets at random pack sizes, on the memory and directory stores; the cache
rebuilt from the repository; ranged reads; damage found by verify."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.store import MemoryStore, Store
from statehold.backup.tree import backup_tree, restore_tree
from statehold.backup.verifying import verify
from statehold.errors import NotFound

from .helpers import MiB, mixed_image, same_bytes, write_image

CS = 64 << 10

Block = tuple[int, str, int]
"""(chunk index, kind: random | zero | copy, seed)."""


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _image(path: Path, chunks: int, tail: int, blocks: list[Block]) -> Path:
    layout = []
    for idx, kind, seed in blocks:
        if idx >= chunks:
            continue
        data = bytes(CS) if kind == "zero" else _bytes(seed % 7 if kind == "copy" else seed, CS)
        layout.append((idx * CS, data))
    if tail:
        layout.append((chunks * CS, _bytes(99, tail)))
    return write_image(path, chunks * CS + tail, layout)


def _store(kind: str, where: Path) -> Store:
    return MemoryStore() if kind == "memory" else DirectoryStore(where)


blocks_st = st.lists(st.tuples(st.integers(0, 47), st.sampled_from(["random", "zero", "copy"]),
                               st.integers(0, 10**6)), max_size=40)
changes_st = st.lists(st.tuples(st.integers(0, 48 * CS), st.integers(1, 150_000), st.integers(0, 10**6)),
                      min_size=1, max_size=12)


@pytest.mark.parametrize("kind", ["memory", "directory"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.integers(1, 48), tail=st.integers(0, CS - 1), blocks=blocks_st, changes=changes_st,
       pack_mib=st.integers(1, 3))
def test_random_images_and_change_sets_round_trip(kind: str, tmp_path: Path, chunks: int, tail: int,
                                                  blocks: list[Block], changes: list[tuple[int, int, int]],
                                                  pack_mib: int) -> None:
    work = Path(tmp_path) / f"ex-{os.urandom(5).hex()}"
    work.mkdir()
    try:
        store = _store(kind, work / "repo")
        repo = Repository.init(store, "pw", version=2, chunk_size=CS, pack_size=pack_mib * MiB)
        a = _image(work / "a.img", chunks, tail, blocks)
        first = create_backup(repo, a, volume="p/v", commit_every=pack_mib * MiB)
        b = work / "b.img"
        shutil.copyfile(a, b)
        with open(b, "r+b") as f:  # the change set; may also grow the image
            for off, length, seed in changes:
                f.seek(off)
                f.write(_bytes(seed, length))
        second = create_backup(repo, b, volume="p/v", parent=Parent(first, a))
        assert second.parent == first.backup_id
        fresh = Repository.open(store, "pw")  # another process: its own cache, synced from index/
        chunkstore.use_cache(fresh, work / "other-cache")
        for m, img in ((first, a), (second, b)):
            out = work / f"{m.backup_id}.out"
            restore_image(fresh, m.backup_id, out)
            assert same_bytes(img, out)
        assert not any(i.key.startswith("chunks/") for i in store.list(""))
        report = verify(fresh, deep=True)
        assert report.ok, report.problems
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["memory", "directory"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    return Repository.init(_store(request.param, tmp_path / "repo"), "pw", version=2, pack_size=MiB)


def test_a_new_repository_is_version_2_with_256k_chunks_and_packs(tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repository.init(store, "pw", version=2)
    assert repo.config.version == 2 and repo.chunk_size == 256 << 10 and repo.config.pack_size == 16 * MiB
    again = Repository.open(store, "pw")
    assert again.config.version == 2 and again.config.pack_size == 16 * MiB


def test_chunks_go_into_few_packs_named_by_index_objects(repo: Repository, tmp_path: Path) -> None:
    img = write_image(tmp_path / "v.img", 6 * MiB, [(0, _bytes(1, 5 * MiB))])
    m = create_backup(repo, img, volume="p/v")
    packs = list(repo.store.list(PACK_PREFIX))
    assert m.stats.chunks_new == 20 and 4 <= len(packs) <= 6  # 1 MiB packs of 256 KiB chunks
    assert len(list(repo.store.list(INDEX_PREFIX))) >= 1
    again = create_backup(repo, img, volume="p/v")
    assert again.stats.chunks_new == 0 and len(list(repo.store.list(PACK_PREFIX))) == len(packs)


def test_the_cache_answers_which_ids_it_holds_in_bulk(repo: Repository, tmp_path: Path) -> None:
    """``present`` (what an incremental backup asks of every chunk its parent names) agrees
    with one-by-one membership across several query batches, duplicates and strangers."""
    img = write_image(tmp_path / "v.img", 40 * MiB, [(0, _bytes(3, 40 * MiB))])
    m = create_backup(repo, img, volume="p/v")
    idx = chunkstore.index_of(repo)
    ids = [cid for _, cid in m.entries()]
    strangers = [i.to_bytes(2, "big") * 16 for i in range(1000)]
    asked = ids + strangers + ids[:10]
    assert len(asked) > 2 * 500  # more than two batches
    assert idx.present(asked) == set(ids) == {cid for cid in asked if cid in idx}
    assert chunkstore.stored(idx, asked) == set(ids)
    assert chunkstore.stored(set(ids[:5]), asked) == set(ids[:5])  # a version 1 known set
    assert idx.present([]) == set()


def test_a_deleted_cache_is_rebuilt_from_the_index_objects(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "v.img")
    m = create_backup(repo, img, volume="p/v")
    cache = chunkstore.index_of(repo).path
    chunkstore.use_cache(repo, tmp_path / "elsewhere")  # closes the old one
    shutil.rmtree(cache.parent)
    fresh = Repository.open(repo.store, "pw")
    restore_image(fresh, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
    assert chunkstore.index_of(fresh).count() == len(m)
    again = create_backup(fresh, img, volume="p/v")  # dedupes against the rebuilt cache
    assert again.stats.chunks_new == 0


def test_a_damaged_cache_file_is_replaced(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "v.img")
    m = create_backup(repo, img, volume="p/v")
    path = chunkstore.index_of(repo).path
    chunkstore.use_cache(repo, path.parent.parent)  # close it
    path.write_bytes(b"this is not an SQLite database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")


def test_index_objects_removed_elsewhere_leave_the_cache(repo: Repository, tmp_path: Path) -> None:
    img = mixed_image(tmp_path / "v.img")
    m = create_backup(repo, img, volume="p/v")
    for info in list(repo.store.list(INDEX_PREFIX)):
        repo.store.delete(info.key)  # as if lost: the cache must not keep what the repo lost
    with pytest.raises(NotFound, match="not in the index"):
        restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists() and not (tmp_path / "out.img.partial").exists()
    again = create_backup(repo, img, volume="p/v")  # stores the chunks again
    assert again.stats.chunks_new == len(m)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.ranges = 0
        self.gets = 0

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges += 1
        return super().get_range(key, offset, length)

    def get(self, key: str) -> bytes:
        self.gets += 1
        return super().get(key)


def test_restore_reads_many_chunks_per_request(tmp_path: Path) -> None:
    store = CountingStore()
    repo = Repository.init(store, "pw", version=2, chunk_size=64 << 10)
    img = write_image(tmp_path / "v.img", 8 * MiB, [(0, _bytes(5, 8 * MiB))])
    m = create_backup(repo, img, volume="p/v")
    assert len(m) == 128
    store.ranges = 0
    restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
    assert store.ranges <= 2  # 128 chunks, one 8 MiB pack: one or two ranged reads


def test_verify_names_a_damaged_chunk_in_a_pack_and_a_missing_pack(repo: Repository, tmp_path: Path) -> None:
    img = write_image(tmp_path / "v.img", 4 * MiB, [(0, _bytes(3, 4 * MiB))])
    m = create_backup(repo, img, volume="p/v")
    assert verify(repo, deep=True).ok
    packs = sorted(repo.store.list(PACK_PREFIX), key=lambda i: i.key)
    raw = bytearray(repo.store.get(packs[0].key))
    raw[100] ^= 0xFF  # inside the first chunk blob
    repo.store.put(packs[0].key, bytes(raw))
    repo.store.delete(packs[1].key)
    quick = verify(repo)
    assert {p.what for p in quick.problems} == {"missing"}
    deep = verify(repo, deep=True)
    kinds = {p.what for p in deep.problems}
    assert kinds == {"missing", "corrupt"}
    assert all(p.backups == (m.backup_id,) for p in deep.problems)
    corrupt = [p for p in deep.problems if p.what == "corrupt"]
    assert len(corrupt) == 1 and "authentication failed" in corrupt[0].detail


def test_tree_backups_round_trip_in_packs(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(_bytes(1, 700_000))
    (src / "b.txt").write_bytes(b"hello\n" * 1000)
    m = backup_tree(repo, src, volume="share")
    assert not any(i.key.startswith("chunks/") for i in repo.store.list(""))
    fresh = Repository.open(repo.store, "pw")  # another process: an empty cache of its own
    chunkstore.use_cache(fresh, tmp_path / "fresh-cache")
    restore_tree(fresh, m.backup_id, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "a.bin").read_bytes() == (src / "d" / "a.bin").read_bytes()
    assert (tmp_path / "out" / "b.txt").read_bytes() == (src / "b.txt").read_bytes()


def test_version_1_repositories_still_back_up_and_restore_as_version_1(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    Repository.init(store, "pw")  # format 1, as every repository made before format 2
    repo = Repository.open(store, "pw")
    assert repo.config.version == 1
    img = mixed_image(tmp_path / "v.img")
    m = create_backup(repo, img, volume="p/v")
    assert sum(1 for _ in store.list("chunks/")) == len(m)
    assert not list(store.list(PACK_PREFIX)) and not list(store.list(INDEX_PREFIX))
    restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
    assert verify(repo, deep=True).ok
