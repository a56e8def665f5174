"""Format 2 garbage collection: dead packs deleted, sparse packs repacked, every kept
backup still restores bit for bit; nothing deleted while a manifest cannot be read; a gc
killed (SIGKILL) at any step loses nothing and a repeated gc frees what it left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from statehold.backup import chunkstore
from statehold.backup.collecting import forget, gc
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX
from statehold.backup.repository import Repository, manifest_key
from statehold.backup.restoring import restore_image
from statehold.backup.store import MemoryStore, Store
from statehold.backup.verifying import verify

from .helpers import MiB, same_bytes, write_image

LATER = 7200.0  # gc's clock two hours on: everything is past the 1 h grace


def _stored(store: Store) -> int:
    return sum(i.size for i in store.list(PACK_PREFIX))


def own(rnd: random.Random) -> list[tuple[int, bytes]]:
    return [(i * MiB, rnd.randbytes(MiB)) for i in range(4, 8)]


def _two_backups(repo: Repository, tmp_path: Path) -> tuple[Manifest, Manifest, Path]:
    rnd = random.Random(4)
    shared = [(i * MiB, rnd.randbytes(MiB)) for i in range(4)]
    a = write_image(tmp_path / "a.img", 8 * MiB, [*shared, *own(rnd)])
    b = write_image(tmp_path / "b.img", 8 * MiB, [*shared, *own(rnd)])
    ma = create_backup(repo, a, volume="p/a")
    mb = create_backup(repo, b, volume="p/b")
    return ma, mb, b


@pytest.fixture(params=["memory", "directory"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    store = MemoryStore() if request.param == "memory" else DirectoryStore(tmp_path / "repo")
    return Repository.init(store, "pw", version=2, pack_size=3 * MiB)


def test_gc_frees_a_forgotten_backups_packs_and_keeps_the_other_whole(repo: Repository,
                                                                      tmp_path: Path) -> None:
    ma, mb, b = _two_backups(repo, tmp_path)
    before = _stored(repo.store)
    assert gc(repo, grace=3600, clock=lambda: time.time() + LATER).chunks_deleted == 0  # all referenced
    forget(repo, ma.backup_id)
    r = gc(repo, grace=3600, clock=lambda: time.time() + LATER)
    after = _stored(repo.store)
    assert r.chunks_deleted == 16 and r.bytes_deleted == before - after
    assert after < before * 0.7  # a's own 4 MiB of the 12 stored went
    restore_image(repo, mb.backup_id, tmp_path / "b.out")
    assert same_bytes(b, tmp_path / "b.out")
    fresh = Repository.open(repo.store, "pw")
    chunkstore.use_cache(fresh, tmp_path / "fresh")
    assert verify(fresh, deep=True).ok
    again = gc(fresh, grace=3600, clock=lambda: time.time() + LATER)
    assert again.chunks_deleted == 0 and _stored(repo.store) == after


def test_gc_respects_the_grace_period_and_a_dry_run_deletes_nothing(repo: Repository, tmp_path: Path) -> None:
    ma, _mb, _b = _two_backups(repo, tmp_path)
    forget(repo, ma.backup_id)
    before = _stored(repo.store)
    young = gc(repo, grace=3600)  # every pack is younger than the grace
    assert young.chunks_deleted == 0 and young.chunks_in_grace == 16
    dry = gc(repo, grace=3600, clock=lambda: time.time() + LATER, dry_run=True)
    assert dry.chunks_deleted == 16 and _stored(repo.store) == before


def test_no_pack_is_deleted_while_a_manifest_cannot_be_read(repo: Repository, tmp_path: Path) -> None:
    ma, mb, b = _two_backups(repo, tmp_path)
    forget(repo, ma.backup_id)
    repo.store.put(manifest_key("20260101T000000Z-deadbeef"), b"garbage")
    before = _stored(repo.store)
    r = gc(repo, grace=3600, clock=lambda: time.time() + LATER)
    assert r.chunks_deleted == 0 and r.chunks_kept_unknown == 16 and len(r.damaged) == 1
    assert _stored(repo.store) == before
    forget(repo, "20260101T000000Z-deadbeef")
    assert gc(repo, grace=3600, clock=lambda: time.time() + LATER).chunks_deleted == 16
    restore_image(repo, mb.backup_id, tmp_path / "b.out")
    assert same_bytes(b, tmp_path / "b.out")


def test_packs_of_a_killed_backup_are_collected_after_the_grace(tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repository.init(store, "pw", version=2, pack_size=MiB)
    img = write_image(tmp_path / "v.img", 4 * MiB, [(0, os.urandom(4 * MiB))])
    m = create_backup(repo, img, volume="p/v")
    store.put(f"{PACK_PREFIX}ab/ab{'0' * 30}", b"half a pack of a writer that died")
    r = gc(repo, grace=3600, clock=lambda: time.time() + LATER)
    assert not store.exists(f"{PACK_PREFIX}ab/ab{'0' * 30}") and r.chunks_deleted == 0
    restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from statehold.backup import packgc
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.locks import Lock
    from statehold.backup.repository import Repository
    point = sys.argv[2]
    def fault(p):
        if p == point:
            os.kill(os.getpid(), signal.SIGKILL)
    repo = Repository.open(DirectoryStore(Path(sys.argv[1])), "pw")
    with Lock(repo, "exclusive"):
        packgc.collect(repo, list(repo.manifests()), unreadable=False, grace=3600,
                       now=time.time() + 7200, dry_run=False, fault=fault)
""")


@pytest.mark.parametrize("point", ["repacked", "indexed", "index-deleted", "pack-deleted"])
def test_a_killed_gc_loses_no_backup_and_the_next_gc_finishes(tmp_path: Path, point: str) -> None:
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw", version=2, pack_size=3 * MiB)
    ma, mb, b = _two_backups(repo, tmp_path)
    forget(repo, ma.backup_id)
    before = _stored(store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "repo"), point],
                          capture_output=True, timeout=120, check=False, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    fresh = Repository.open(store, "pw")
    chunkstore.use_cache(fresh, tmp_path / "fresh")
    restore_image(fresh, mb.backup_id, tmp_path / "b1.out")
    assert same_bytes(b, tmp_path / "b1.out")
    gc(fresh, grace=3600, clock=lambda: time.time() + LATER)
    assert _stored(store) < before * 0.7
    restore_image(fresh, mb.backup_id, tmp_path / "b2.out")
    assert same_bytes(b, tmp_path / "b2.out")
    assert verify(fresh, deep=True).ok
    assert list(store.list(INDEX_PREFIX))
