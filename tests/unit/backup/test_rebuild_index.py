"""`backup rebuild-index` (format §11.7, Rebuild) on a real directory repository: index
objects lost or damaged make restores fail NotFound; a rebuild from the pack headers makes
every backup restore bit for bit again, a second run adds nothing, a damaged pack header or
chunk blob is reported and left out, and a rebuild killed (SIGKILL) at any step leaves a
repository that a rerun mends."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from statehold.backup import chunkstore
from statehold.backup.collecting import forget, gc
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX, decode_index
from statehold.backup.rebuildindex import rebuild_index
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.store import Store
from statehold.backup.verifying import verify
from statehold.errors import FailedPrecondition, NotFound

from .damage import flip_byte
from .helpers import MiB, same_bytes, write_image
from .killing import kill_at

CS = 64 << 10


def _image(path: Path, seed: int, size: int = 6 * MiB) -> Path:
    rnd = random.Random(seed)
    halves = [(i * MiB // 2, rnd.randbytes(MiB // 2)) for i in range(12) if i % 3]
    return write_image(path, size + 999, [*halves, (size, rnd.randbytes(999))])


def _backups(tmp_path: Path, store: Store) -> tuple[Repository, list[tuple[Manifest, Path]]]:
    """A format 2 repository of 64 KiB chunks and 1 MiB packs holding three backups of one
    volume (a full one and two incrementals), so it has many packs and index objects."""
    repo = Repository.init(store, "pw", version=2, chunk_size=CS, pack_size=MiB)
    out: list[tuple[Manifest, Path]] = []
    img = _image(tmp_path / "v0.img", 0)
    out.append((create_backup(repo, img, volume="p/v", commit_every=MiB), img))
    for gen in (1, 2):
        nxt = tmp_path / f"v{gen}.img"
        nxt.write_bytes(img.read_bytes())
        with open(nxt, "r+b") as f:
            rnd = random.Random(100 + gen)
            for _ in range(5):
                f.seek(rnd.randrange(6 * MiB))
                f.write(rnd.randbytes(100_000))
        out.append((create_backup(repo, nxt, volume="p/v", parent=Parent(out[-1][0], img),
                                  commit_every=MiB), nxt))
        img = nxt
    return repo, out


def _fresh(store: Store, cache: Path) -> Repository:
    """Another process's view: its own, empty index cache, synced from the repository."""
    repo = Repository.open(store, "pw")
    chunkstore.use_cache(repo, cache)
    return repo


def _restores(repo: Repository, backups: list[tuple[Manifest, Path]], where: Path) -> None:
    for m, img in backups:
        out = where / f"{m.backup_id}.out"
        restore_image(repo, m.backup_id, out)
        assert same_bytes(img, out), m.backup_id
        out.unlink()


def _indexed_packs(store: Store, repo: Repository) -> set[bytes]:
    return {p for info in store.list(INDEX_PREFIX)
            for _c, p, _o, _n in decode_index(repo.get_blob(info.key), info.key)}


def test_lost_index_objects_are_rebuilt_from_the_pack_headers(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    _repo, backups = _backups(tmp_path, store)
    packs = {i.key for i in store.list(PACK_PREFIX)}
    assert len(packs) >= 6
    for info in list(store.list(INDEX_PREFIX)):  # every index object lost
        store.delete(info.key)
    lost = _fresh(store, tmp_path / "cache-1")
    with pytest.raises(NotFound, match="not in the index"):
        restore_image(lost, backups[0][0].backup_id, tmp_path / "nope.out")

    r = rebuild_index(lost)
    assert r.ok and r.packs_listed == len(packs) and r.packs_read == len(packs)
    assert r.entries_added >= sum(m.stats.chunks_new for m, _ in backups) and r.index_objects >= 1
    _restores(lost, backups, tmp_path)
    other = _fresh(store, tmp_path / "cache-2")  # what the repository holds, not this cache
    _restores(other, backups, tmp_path)
    assert verify(other, deep=True).ok

    again = rebuild_index(other)  # idempotent: nothing is unindexed now
    assert (again.packs_read, again.entries_added, again.index_objects) == (0, 0, 0)
    every = rebuild_index(other, all_packs=True)  # reads every header, finds nothing missing
    assert every.packs_read == len(packs) and (every.entries_added, every.index_objects) == (0, 0)
    assert every.ok


def test_a_damaged_index_object_is_replaced_and_quarantined_so_gc_collects_again(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    repo, backups = _backups(tmp_path, store)
    names = sorted(i.key for i in store.list(INDEX_PREFIX))
    assert len(names) >= 2
    victim = names[0]
    victim_packs = {p for _c, p, _o, _n in decode_index(repo.get_blob(victim), victim)}
    flip_byte(store, victim, 40)
    damaged = _fresh(store, tmp_path / "cache-1")
    report = verify(damaged)
    assert not report.ok and any(p.what == "index" and p.name == victim for p in report.problems)
    forget(damaged, backups[2][0].backup_id)  # its own chunks (in its own packs) are garbage now
    frozen = gc(damaged, grace=0)
    assert (frozen.chunks_deleted, frozen.bytes_deleted) == (0, 0)  # no pack deleted while it exists
    kept = backups[:2]

    r = rebuild_index(damaged)
    # which packs the damaged object named cannot be known: every header was read
    assert r.packs_read == r.packs_listed and r.entries_added > 0
    assert r.index_quarantined == [f"quarantine/{victim}"] and r.ok
    assert not store.exists(victim) and store.exists(f"quarantine/{victim}")
    assert victim_packs <= _indexed_packs(store, damaged)
    fresh = _fresh(store, tmp_path / "cache-2")
    _restores(fresh, kept, tmp_path)
    assert verify(fresh, deep=True).ok
    assert rebuild_index(fresh).entries_added == 0
    freed = gc(fresh, grace=0)  # gc collects again: the forgotten backup's packs go
    assert freed.chunks_deleted > 0 and freed.bytes_deleted > 0
    _restores(_fresh(store, tmp_path / "cache-3"), kept, tmp_path)


def test_a_damaged_pack_header_and_a_damaged_blob_are_reported_and_skipped(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    _repo, backups = _backups(tmp_path, store)
    packs = sorted(i.key for i in store.list(PACK_PREFIX))
    # pack names are random: the blob is damaged in the largest pack, whose first bytes
    # are chunk blobs for sure (in a pack of one small, well-compressed chunk, byte 50
    # could already be its header)
    broken_blob = max(packs, key=lambda key: len(store.get(key)))
    broken_header = next(key for key in packs if key != broken_blob)
    flip_byte(store, broken_header, -10)  # inside the header blob (its tag)
    flip_byte(store, broken_blob, 50)  # inside the first chunk blob
    for info in list(store.list(INDEX_PREFIX)):
        store.delete(info.key)
    fresh = _fresh(store, tmp_path / "cache")

    r = rebuild_index(fresh)
    assert not r.ok and list(r.damaged_packs) == [broken_header]
    assert len(r.damaged_blobs) == 1 and r.damaged_blobs[0].pack == broken_blob
    assert r.packs_read == len(packs)
    indexed = _indexed_packs(store, fresh)
    assert {p.rpartition("/")[2] for p in packs} - {p.hex() for p in indexed} == {
        broken_header.rpartition("/")[2]}
    report = verify(fresh, deep=True)  # what is lost is named, with the backups it breaks
    lost = {p.name for p in report.problems if p.what == "missing"}
    assert r.damaged_blobs[0].chunk in lost
    # a backup that needs none of the lost chunks restores
    whole = [(m, img) for m, img in backups if not {c.hex() for c in m.chunk_ids()} & lost]
    _restores(fresh, whole, tmp_path)
    # a second run reads only the pack that is still unindexed, and says so again
    again = rebuild_index(fresh)
    assert again.packs_read == 1 and list(again.damaged_packs) == [broken_header]


def test_a_format_1_repository_has_no_index_to_rebuild(tmp_path: Path) -> None:
    repo = Repository.init(DirectoryStore(tmp_path / "repo"), "pw", version=1)
    with pytest.raises(FailedPrecondition, match="format 1"):
        rebuild_index(repo)


CHILD = """
    from statehold.backup import chunkstore
    from statehold.backup.rebuildindex import rebuild_index
    chunkstore.use_cache(repo, Path(args[0]))
    rebuild_index(repo, fault=fault, index_every=1, parallel=2)
"""


@pytest.mark.parametrize(("point", "nth"), [("pack-read", 1), ("pack-read", 5), ("index-stored", 1),
                                            ("index-stored", 4)])
def test_a_killed_rebuild_leaves_a_repository_a_rerun_mends(tmp_path: Path, point: str, nth: int) -> None:
    store = DirectoryStore(tmp_path / "repo")
    _repo, backups = _backups(tmp_path, store)
    packs = {i.key for i in store.list(PACK_PREFIX)}
    for info in list(store.list(INDEX_PREFIX)):
        store.delete(info.key)
    kill_at(point, nth, tmp_path / "repo", CHILD, str(tmp_path / "child-cache"))
    left = len(list(store.list(INDEX_PREFIX)))
    if point == "index-stored":
        assert left == nth  # the kill came after that many index objects were put
    rerun = _fresh(store, tmp_path / "rerun-cache")
    r = rebuild_index(rerun)  # the dead child's lock is recognised (same host, pid gone)
    assert r.ok and r.packs_read == len(packs) - left  # one pack per index object: only the rest
    _restores(_fresh(store, tmp_path / "check-cache"), backups, tmp_path)
    assert verify(_fresh(store, tmp_path / "verify-cache"), deep=True).ok
