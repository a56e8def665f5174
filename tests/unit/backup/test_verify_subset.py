"""``verify --read-data-subset``: slices ``n/m`` and seeded percentages of the stored
objects (packs in format 2, chunk objects in format 1), read in full, on the memory and
directory stores. What a user relies on: the slices of one ``m`` read every object exactly
once between them, damage is found by the slice holding it (named, with the backups it
breaks) and by no other, and a percentage reads that share of the objects."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.packs import PACK_PREFIX, pack_id_of
from statehold.backup.repository import Repository
from statehold.backup.sampling import Subset
from statehold.backup.store import MemoryStore, ObjectInfo, Store
from statehold.backup.verifying import VerifyReport, verify
from statehold.errors import InvalidArgument

from .helpers import MiB, write_image

CS = 64 << 10


class Reads:
    """A real store that remembers which objects were read (by key), per verify run."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.keys: set[str] = set()

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        self.keys.add(key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.keys.add(key)
        return self.inner.get_range(key, offset, length)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()

    def data_read(self, prefix: str) -> set[str]:
        out = {k for k in self.keys if k.startswith(prefix)}
        self.keys.clear()
        return out


def _repo(kind: str, where: Path, version: int) -> tuple[Repository, Reads]:
    inner: Store = MemoryStore() if kind == "memory" else DirectoryStore(where / "repo")
    store = Reads(inner)
    repo = Repository.init(store, "pw", version=version, chunk_size=CS,
                           **({"pack_size": MiB} if version == 2 else {}))
    return repo, store


def _backups(repo: Repository, where: Path, n: int = 2) -> list[str]:
    """``n`` backups of 6 MiB of random data each (about 12 packs of 1 MiB in format 2,
    96 chunk objects in format 1)."""
    ids = []
    for i in range(n):
        img = write_image(where / f"img{i}", 6 * MiB, [(0, random.Random(i).randbytes(6 * MiB))])
        ids.append(create_backup(repo, img, volume=f"p/v{i}", commit_every=MiB).backup_id)
    return ids


def _prefix(version: int) -> str:
    return PACK_PREFIX if version == 2 else "chunks/"


def _corrupt(store: Reads, key: str, at: int) -> None:
    data = bytearray(store.inner.get(key))
    data[at] ^= 0x40
    store.inner.put(key, bytes(data))


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_slices_read_every_object_once_and_damage_only_in_its_slice(kind: str, version: int,
                                                                    tmp_path: Path) -> None:
    repo, store = _repo(kind, tmp_path, version)
    ids = _backups(repo, tmp_path)
    prefix = _prefix(version)
    every = {i.key for i in store.list(prefix)}
    assert len(every) >= 10
    store.data_read(prefix)

    reads: list[set[str]] = []
    for part in range(1, 6):
        report = verify(repo, subset=Subset.parse(f"{part}/5"))
        got = store.data_read(prefix)
        assert report.ok, report.problems
        assert report.subset is not None and report.subset.read == len(got)
        assert report.subset.total == len(every)
        assert report.subset.objects == ("packs" if version == 2 else "chunks")
        assert report.subset.bytes_read == sum(i.size for i in store.list(prefix) if i.key in got)
        assert report.bytes_checked == report.subset.plain_bytes > 0 or not got
        reads.append(got)
    assert sum(len(r) for r in reads) == len(every)  # disjoint ...
    assert set().union(*reads) == every  # ... and together everything

    # a flipped byte inside the first chunk blob of one object: found by its slice only
    victim = sorted(every)[len(every) // 2]
    _corrupt(store, victim, 40)
    holder = next(i for i, r in enumerate(reads) if victim in r) + 1
    for part in range(1, 6):
        report = verify(repo, subset=Subset.parse(f"{part}/5"))
        if part != holder:
            assert report.ok, (part, report.problems)
            continue
        assert [p.what for p in report.problems] == ["corrupt"]
        p = report.problems[0]
        assert victim in p.detail or victim.endswith(p.name)
        assert set(p.backups) <= set(ids) and p.backups  # every chunk here belongs to a backup
    assert not verify(repo, deep=True).ok  # the deep verify agrees


@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_a_damaged_pack_header_names_the_pack_and_the_backups_it_breaks(kind: str,
                                                                        tmp_path: Path) -> None:
    repo, store = _repo(kind, tmp_path, 2)
    ids = _backups(repo, tmp_path, 1)
    victim = max(store.list(PACK_PREFIX), key=lambda i: i.size)
    _corrupt(store, victim.key, victim.size - 10)  # inside the header blob
    sub = Subset(parts=3)
    part = sub.slice_of(pack_id_of(victim.key))
    report = verify(repo, subset=Subset.parse(f"{part}/3"))
    assert [(p.what, p.name) for p in report.problems] == [("pack", pack_id_of(victim.key).hex())]
    assert report.problems[0].backups == (ids[0],)
    assert verify(repo).ok  # the quick verify cannot see inside packs


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_a_percentage_reads_that_share_and_a_seed_repeats_it(kind: str, version: int,
                                                             tmp_path: Path) -> None:
    repo, store = _repo(kind, tmp_path, version)
    _backups(repo, tmp_path)
    prefix = _prefix(version)
    total = len(list(store.list(prefix)))
    store.data_read(prefix)
    for pct in (10, 25, 50, 100):
        report = verify(repo, subset=Subset.parse(f"{pct}%", seed=7))
        got = store.data_read(prefix)
        assert report.ok and report.subset is not None
        assert report.subset.read == len(got)
        # the share, rounded, at least one object
        assert len(got) == max(1, round(total * pct / 100)), (pct, total, len(got))
    first = verify(repo, subset=Subset.parse("30%", seed=1))
    a = store.data_read(prefix)
    verify(repo, subset=Subset.parse("30%", seed=1))
    assert store.data_read(prefix) == a  # same seed, same objects
    # another seed, others: with few objects one other seed may draw the same ones (pack
    # names are random), eight in a row do not
    others = []
    for seed in range(2, 10):
        verify(repo, subset=Subset.parse("30%", seed=seed))
        others.append(store.data_read(prefix))
    assert any(o != a for o in others), (total, a)
    unseeded = verify(repo, subset=Subset.parse("30%"))
    assert first.subset is not None and first.subset.subset == "30% (seed 1)"
    assert unseeded.subset is not None and "seed" in unseeded.subset.subset  # reported, repeatable


def test_subset_arguments() -> None:
    assert Subset.parse("2/5") == Subset(part=2, parts=5)
    assert Subset.parse("12.5%", seed=3) == Subset(percent=12.5, seed=3)
    for bad in ("0/5", "6/5", "0%", "101%", "5", "a/b", "1/0"):
        with pytest.raises(InvalidArgument):
            Subset.parse(bad)
    with pytest.raises(InvalidArgument):
        Subset.parse("1/5", seed=1)
    repo = Repository.init(MemoryStore(), "pw", version=2)
    with pytest.raises(InvalidArgument):
        verify(repo, deep=True, subset=Subset(parts=2, part=1))


def test_an_empty_repository_reads_nothing() -> None:
    repo = Repository.init(MemoryStore(), "pw", version=2)
    report: VerifyReport = verify(repo, subset=Subset.parse("10%"))
    assert report.ok and report.subset is not None
    assert (report.subset.total, report.subset.read, report.subset.bytes_read) == (0, 0, 0)


def test_an_index_entry_disagreeing_with_its_pack_header_is_named(tmp_path: Path) -> None:
    from statehold.backup.packs import Entry, encode_index, index_key, new_index_name, parse_pack

    repo, store = _repo("memory", tmp_path, 2)
    ids = _backups(repo, tmp_path, 1)
    pack = max(store.list(PACK_PREFIX), key=lambda i: i.size)
    first = parse_pack(repo.codec, pack.key, store.inner.get(pack.key))[0]
    name = new_index_name()  # a writer's bug: the right chunk and pack, the wrong offset
    repo.put_blob(index_key(name), encode_index([Entry(first.cid, first.pack, first.offset + 1,
                                                       first.length)]))
    part = Subset(parts=4).slice_of(first.pack)
    report = verify(repo, subset=Subset.parse(f"{part}/4"))
    assert [(p.what, p.name) for p in report.problems] == [("index", index_key(name))]
    assert first.cid.hex() in report.problems[0].detail and report.problems[0].backups == (ids[0],)
