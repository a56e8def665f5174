"""Format 2 through a real S3 server (SeaweedFS): random images and change sets round trip
at random pack sizes, restores use ranged GETs, gc frees a forgotten backup's packs, and a
format 1 repository in the bucket converts in place."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statehold.backup import chunkstore
from statehold.backup.collecting import forget, gc
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.migrate import migrate
from statehold.backup.packs import PACK_PREFIX
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.verifying import verify
from tests.unit.backup.helpers import MiB, mixed_image, same_bytes, write_image

CS = 64 << 10


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.integers(1, 64), seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
       changes=st.lists(st.tuples(st.integers(0, 64 * CS), st.integers(1, 200_000)), min_size=1, max_size=8),
       pack_mib=st.integers(1, 3))
def test_random_images_round_trip_through_s3(s3_config: S3Config, scratch: Path, chunks: int,
                                             seeds: list[int], changes: list[tuple[int, int]],
                                             pack_mib: int) -> None:
    work = scratch / f"ex-{os.urandom(5).hex()}"
    work.mkdir()
    try:
        prefix = f"repo-{os.urandom(5).hex()}"
        store = S3Store(dataclasses.replace(s3_config, prefix=prefix))
        repo = Repository.init(store, "pw", version=2, chunk_size=CS, pack_size=pack_mib * MiB)
        rnd = random.Random(seeds[0])
        a = write_image(work / "a.img", chunks * CS + 777,
                        [(rnd.randrange(chunks) * CS, random.Random(s).randbytes(CS)) for s in seeds])
        first = create_backup(repo, a, volume="p/v")
        b = work / "b.img"
        shutil.copyfile(a, b)
        with open(b, "r+b") as f:
            for off, length in changes:
                f.seek(off)
                f.write(rnd.randbytes(length))
        second = create_backup(repo, b, volume="p/v", parent=Parent(first, a))
        fresh = Repository.open(S3Store(dataclasses.replace(s3_config, prefix=prefix)), "pw")
        chunkstore.use_cache(fresh, work / "cache")
        for m, img in ((first, a), (second, b)):
            restore_image(fresh, m.backup_id, work / m.backup_id)
            assert same_bytes(img, work / m.backup_id)
        assert verify(fresh, deep=True).ok
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_gc_and_migration_through_s3(s3_config: S3Config, scratch: Path) -> None:
    store = S3Store(s3_config)
    Repository.init(store, "pw")  # format 1
    repo = Repository.open(store, "pw")
    img = mixed_image(scratch / "v.img")
    kept = create_backup(repo, img, volume="p/v")
    other = write_image(scratch / "o.img", 4 * MiB, [(0, random.Random(9).randbytes(4 * MiB))])
    gone = create_backup(repo, other, volume="p/o")
    assert migrate(repo, pack_size=MiB).converted
    assert not list(store.list("chunks/"))
    restore_image(repo, kept.backup_id, scratch / "kept.img")
    assert same_bytes(img, scratch / "kept.img")
    before = sum(i.size for i in store.list(PACK_PREFIX))
    forget(repo, gone.backup_id)
    r = gc(repo, grace=3600, clock=lambda: time.time() + 7200)
    assert r.chunks_deleted == 4 and r.bytes_deleted >= 4 * MiB
    assert sum(i.size for i in store.list(PACK_PREFIX)) == before - r.bytes_deleted
    restore_image(repo, kept.backup_id, scratch / "kept2.img")
    assert same_bytes(img, scratch / "kept2.img")
    assert verify(repo, deep=True).ok
