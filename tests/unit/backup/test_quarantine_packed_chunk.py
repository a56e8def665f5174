"""A damaged chunk inside a pack (format §11.7, Quarantine): `verify --deep --quarantine`
drops its index entry (the index objects naming that copy are rewritten without it, the
new ones put before the old ones go), so the next backup of the same data stores the chunk
again, and the older backups that name it restore bit for bit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX, decode_index, pack_id_of, pack_key
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.sampling import Subset
from statehold.backup.verifying import verify
from statehold.errors import Corrupt

from .damage import flip_byte
from .helpers import MiB, same_bytes, write_image


def _fresh(repo: Repository, cache: Path) -> Repository:
    other = Repository.open(repo.store, "pw")
    chunkstore.use_cache(other, cache)
    return other


def _assert_unindexed_then_mended(repo: Repository, store: DirectoryStore, tmp_path: Path, img: Path,
                                  victim: bytes, first: Manifest, second: Manifest) -> None:
    """After the quarantine: no index object places ``victim``; every other chunk is still
    indexed (a quick verify finds only it missing); the next backup of the same data stores
    exactly that chunk again, and every backup then restores bit for bit."""
    assert victim not in {c for info in store.list(INDEX_PREFIX)
                          for c, _p, _o, _n in decode_index(repo.get_blob(info.key), info.key)}
    # every other chunk is still indexed: the quick verify finds only this one missing
    quick = verify(_fresh(repo, tmp_path / "c2"))
    assert [(p.what, p.name) for p in quick.problems] == [("missing", victim.hex())]

    third = create_backup(_fresh(repo, tmp_path / "c3"), img, volume="p/v", parent=Parent(second, img))
    assert third.stats.chunks_new == 1  # only the unindexed chunk is stored again
    reader = _fresh(repo, tmp_path / "c4")
    for m in (first, second, third):
        out = tmp_path / f"{m.backup_id}.img"
        restore_image(reader, m.backup_id, out)
        assert same_bytes(img, out)
    assert verify(reader, deep=True).ok


def test_a_damaged_chunk_in_a_pack_is_unindexed_and_the_next_backup_mends_it(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw", version=2, chunk_size=64 << 10, pack_size=MiB)
    rnd = random.Random(7)
    img = write_image(tmp_path / "v.img", 4 * MiB + 100, [(i * MiB, rnd.randbytes(MiB)) for i in range(4)])
    first = create_backup(repo, img, volume="p/v", commit_every=MiB)
    second = create_backup(repo, img, volume="p/v", parent=Parent(first, img))  # names the same chunks
    # damage one blob: the 5th chunk of the first backup, inside its pack
    victim = list(first.chunk_ids())[4]
    loc = chunkstore.index_of(repo).lookup(victim)
    assert loc is not None
    flip_byte(store, pack_key(loc.pack), loc.offset + loc.length // 2)
    index_before = {i.key for i in store.list(INDEX_PREFIX)}
    with pytest.raises(Corrupt, match=victim.hex()):
        restore_image(_fresh(repo, tmp_path / "c0"), first.backup_id, tmp_path / "broken.img")

    checker = _fresh(repo, tmp_path / "c1")
    report = verify(checker, deep=True, quarantine=True)
    [problem] = report.problems
    assert (problem.what, problem.name) == ("corrupt", victim.hex())
    assert set(problem.backups) == {first.backup_id, second.backup_id}
    assert problem.quarantined.startswith("unindexed")
    # the index objects naming it were replaced; no index object places the chunk anywhere now
    index_after = {i.key for i in store.list(INDEX_PREFIX)}
    assert index_before - index_after and index_after - index_before
    _assert_unindexed_then_mended(repo, store, tmp_path, img, victim, first, second)


def test_a_subset_verify_with_quarantine_unindexes_a_damaged_blob_of_a_pack_it_reads(tmp_path: Path) -> None:
    """``verify --read-data-subset N% --quarantine``: the same unindexing as the deep verify,
    for the packs the subset reads, and only those."""
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw", version=2, chunk_size=64 << 10, pack_size=MiB)
    rnd = random.Random(11)
    img = write_image(tmp_path / "v.img", 4 * MiB + 100, [(i * MiB, rnd.randbytes(MiB)) for i in range(4)])
    first = create_backup(repo, img, volume="p/v", commit_every=MiB)
    second = create_backup(repo, img, volume="p/v", parent=Parent(first, img))
    victim = list(first.chunk_ids())[6]
    loc = chunkstore.index_of(repo).lookup(victim)
    assert loc is not None
    flip_byte(store, pack_key(loc.pack), loc.offset + 3)
    index_before = {i.key for i in store.list(INDEX_PREFIX)}

    # a slice that does not hold the damaged pack reads other packs and changes nothing
    others = [pack_id_of(i.key) for i in store.list(PACK_PREFIX) if i.key != pack_key(loc.pack)]
    assert others
    # pack ids are random: the first m with a slice holding another pack but not this one
    part, parts = next((n, m) for m in range(2, 64)
                       for n in sorted({Subset(1, m).slice_of(p) for p in others})
                       if n != Subset(1, m).slice_of(loc.pack))
    missed = verify(_fresh(repo, tmp_path / "c0"), quarantine=True, subset=Subset(part=part, parts=parts))
    assert missed.subset is not None and missed.subset.read >= 1
    assert missed.ok
    assert {i.key for i in store.list(INDEX_PREFIX)} == index_before

    report = verify(_fresh(repo, tmp_path / "c1"), quarantine=True, subset=Subset.parse("100%"))
    assert report.subset is not None and report.subset.read == report.subset.total
    [problem] = report.problems
    assert (problem.what, problem.name) == ("corrupt", victim.hex())
    assert set(problem.backups) == {first.backup_id, second.backup_id}
    assert problem.quarantined.startswith("unindexed") and pack_key(loc.pack) in problem.quarantined
    index_after = {i.key for i in store.list(INDEX_PREFIX)}
    assert index_before - index_after and index_after - index_before
    _assert_unindexed_then_mended(repo, store, tmp_path, img, victim, first, second)
    # the damaged copy is still in its pack (gc has not run), but no index entry places the
    # chunk there any more: no backup reads it, so reading every pack again reports nothing
    assert any(i.key == pack_key(loc.pack) for i in store.list(PACK_PREFIX))
    again = verify(_fresh(repo, tmp_path / "c5"), subset=Subset.parse("100%"))
    assert again.subset is not None and again.subset.read == again.subset.total
    assert again.ok, again.problems
