"""`statehold backup rebuild-index` as a user runs it (a directory target: lost index
objects, restore fails, rebuild, restore bit for bit; a damaged pack header exits 1 naming
the pack; a format 1 target is refused), and the rebuild through a real S3 server
(SeaweedFS), where pack headers are read with ranged GETs."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

from typer.testing import CliRunner, Result

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.packs import INDEX_PREFIX, PACK_PREFIX, pack_key
from statehold.backup.rebuildindex import rebuild_index
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.verifying import verify
from statehold.cli.main import build_app
from tests.unit.backup.damage import flip_byte
from tests.unit.backup.helpers import MiB, same_bytes, write_image

ENV = {"STATEHOLD_REPO_PASSWORD": "s3cret"}


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)], env=ENV)


def _image(path: Path, seed: int) -> Path:
    rnd = random.Random(seed)
    return write_image(path, 5 * MiB + 321, [(i * MiB, rnd.randbytes(MiB)) for i in range(5)])


def test_rebuild_index_through_the_cli(tmp_path: Path) -> None:
    home, where = tmp_path / "home", tmp_path / "repo"
    r = run(home, "target", "add", "t", "--path", str(where), "--pack-size", str(MiB))
    assert r.exit_code == 0, r.output
    store = DirectoryStore(where)
    repo = Repository.open(store, "s3cret")
    img = _image(tmp_path / "v.img", 1)
    first = create_backup(repo, img, volume="p/v")
    img2 = tmp_path / "v2.img"
    img2.write_bytes(img.read_bytes())
    with open(img2, "r+b") as f:
        f.seek(2 * MiB + 17)
        f.write(os.urandom(300_000))
    second = create_backup(repo, img2, volume="p/v", parent=Parent(first, img))
    for info in list(store.list(INDEX_PREFIX)):
        store.delete(info.key)

    r = run(home, "restore", second.backup_id, "-t", "t", "--to-file", str(tmp_path / "lost.img"), "-q")
    assert r.exit_code != 0 and "not in the index" in r.stderr
    r = run(home, "backup", "rebuild-index", "-t", "t", "-q")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    packs = len(list(store.list(PACK_PREFIX)))
    assert f"{packs} of {packs} pack headers read" in r.stdout
    for m, source in ((first, img), (second, img2)):
        out = tmp_path / f"{m.backup_id}.img"
        r = run(home, "restore", m.backup_id, "-t", "t", "--to-file", str(out), "-q")
        assert r.exit_code == 0, r.stderr
        assert same_bytes(source, out)
    r = run(home, "backup", "rebuild-index", "-t", "t", "-q")  # nothing left to do
    assert r.exit_code == 0 and f"0 of {packs} pack headers read" in r.stdout and "0 entries" in r.stdout

    # a damaged chunk inside a pack: verify --deep --quarantine unindexes it, the next backup
    # of the same data stores it again, and the backup naming it restores again
    cid = list(first.chunk_ids())[2]
    reader = Repository.open(store, "s3cret")
    chunkstore.known_chunks(reader)  # synced from the repository
    loc = chunkstore.index_of(reader).lookup(cid)
    assert loc is not None
    flip_byte(store, pack_key(loc.pack), loc.offset + 100)
    r = run(home, "backup", "verify", "-t", "t", "--deep", "--quarantine", "-q")
    assert r.exit_code == 1 and f"corrupt {cid.hex()}" in r.stdout
    assert "; unindexed: entry dropped" in r.stdout
    create_backup(Repository.open(store, "s3cret"), img, volume="p/v")
    r = run(home, "restore", first.backup_id, "-t", "t", "--to-file", str(tmp_path / "mended.img"), "-q")
    assert r.exit_code == 0, r.stderr
    assert same_bytes(img, tmp_path / "mended.img")

    victim = sorted(i.key for i in store.list(PACK_PREFIX) if i.key != pack_key(loc.pack))[0]
    flip_byte(store, victim, -8)
    r = run(home, "backup", "rebuild-index", "-t", "t", "--all", "-q")
    assert r.exit_code == 1 and f"pack {victim}: header cannot be read" in r.stdout
    # the blob unindexed above is still damaged in its pack: named again, and not indexed
    assert f"chunk {cid.hex()} in {pack_key(loc.pack)}: damaged, not indexed" in r.stdout
    assert "1 packs and 1 chunks could not be indexed" in r.stderr

    r = run(home, "target", "add", "old", "--path", str(tmp_path / "v1"), "--format", "1")
    assert r.exit_code == 0, r.output
    r = run(home, "backup", "rebuild-index", "-t", "old", "-q")
    assert r.exit_code != 0 and "format 1" in r.stderr
    assert json.loads((tmp_path / "v1" / "config").read_text())["version"] == 1


def test_rebuild_index_through_s3(s3_config: S3Config, tmp_path: Path) -> None:
    config = dataclasses.replace(s3_config, prefix=f"rebuild-{os.urandom(4).hex()}")
    store = S3Store(config)
    repo = Repository.init(store, "pw", version=2, chunk_size=64 << 10, pack_size=MiB)
    img = _image(tmp_path / "v.img", 2)
    m = create_backup(repo, img, volume="p/v", commit_every=MiB)  # an index object per ~MiB
    names = sorted(i.key for i in store.list(INDEX_PREFIX))
    assert len(names) >= 3
    store.delete(names[0])  # one lost
    for key in names[1:]:
        flip_byte(store, key, 30)  # the others damaged
    fresh = Repository.open(S3Store(config), "pw")
    chunkstore.use_cache(fresh, tmp_path / "cache")
    assert not verify(fresh).ok

    r = rebuild_index(fresh)
    assert r.ok and r.packs_read == len(list(store.list(PACK_PREFIX)))
    assert sorted(r.index_quarantined) == [f"quarantine/{k}" for k in names[1:]]
    other = Repository.open(S3Store(config), "pw")
    chunkstore.use_cache(other, tmp_path / "other-cache")
    restore_image(other, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
    assert verify(other, deep=True).ok
