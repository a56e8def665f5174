"""One flipped byte in one manifest (or one chunk) of a repository on a real pool and a
directory target: backups of every volume go on, listings flag the damaged backup, prune
and gc proceed and report it, gc deletes no chunk it might name, ``forget`` removes one
backup, deep verify names the damaged chunk; through the volume service, the operator and
the CLI (exit codes per cli/output.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.locks import Lock
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository, manifest_key
from statehold.backup.retention import Policy
from statehold.backup.volumes import backup_volume, restore_volume
from statehold.controller.backups import assign_backup, run_backup
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import MiB, Volume, VolumeMode
from statehold.kube.kinds import VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.integration.backup.test_cli import ok, run
from tests.unit.backup.damage import damage_chunk, damage_manifest
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class, volume_backup

pytestmark = pytest.mark.root
PASSWORD = "s3cret"  # the CLI helpers' STATEHOLD_REPO_PASSWORD


def write(path: Path, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
        os.fsync(fd)
    finally:
        os.close(fd)


def volume(pool: Pool, name: str) -> Volume:
    vol = pool.create_volume(name, 16 * MiB, mode=VolumeMode.BLOCK, fs=None)
    write(vol.path, 0, os.urandom(4 * MiB))
    return vol


def digest(path: Path, size: int = 16 * MiB) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def chunk_files(repo_dir: Path) -> set[str]:
    return {str(p.relative_to(repo_dir)) for p in (repo_dir / "chunks").rglob("*") if p.is_file()}


def test_every_volume_backs_up_around_a_damaged_manifest_and_retention_quarantines_it(
        pool: Pool, scratch: Path) -> None:
    repo = Repository.init(DirectoryStore(scratch / "repo"), PASSWORD)
    a, b = volume(pool, "a"), volume(pool, "b")
    a1, b1 = backup_volume(repo, pool, "a"), backup_volume(repo, pool, "b")
    damage_manifest(repo, a1.backup_id)

    write(b.path, 8 * MiB, os.urandom(MiB))
    b2 = backup_volume(repo, pool, "b")  # another volume: incremental as before
    assert b2.parent_id == b1.backup_id and b2.bytes_read == MiB
    assert [(d.backup_id, d.state) for d in b2.damaged] == [(a1.backup_id, "damaged")]
    a2 = backup_volume(repo, pool, "a")  # the damaged backup's own volume: in full
    assert a2.parent_id is None and a2.bytes_read == 4 * MiB
    assert [d.backup_id for d in a2.damaged] == [a1.backup_id]
    for result, vol, name in ((a2, a, "a-copy"), (b2, b, "b-copy")):
        assert digest(restore_volume(repo, result.backup_id, pool, name).path) == digest(vol.path)

    b3 = backup_volume(repo, pool, "b", retention=Policy(keep_last=1))
    assert sorted(b3.pruned) == sorted([b1.backup_id, b2.backup_id])
    [d] = repo.scan().damaged
    assert (d.backup_id, d.state) == (a1.backup_id, "quarantined")
    assert sorted(repo.backup_ids()) == sorted([a2.backup_id, b3.backup_id])


def test_the_operator_backs_up_around_a_damaged_manifest_and_says_so(
        memory_kube: MemoryKube, node: Node, pool: Pool, scratch: Path, fake_clock: Any) -> None:
    repo = Repository.init(DirectoryStore(scratch / "repo"), PASSWORD)
    secret(memory_kube, "pw", password=PASSWORD)
    path_target(memory_kube, path=str(scratch / "repo"))
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data", node="n1", pool="test", volume="db", size="16Mi")
    volume(pool, "db"), volume(pool, "other")
    damaged = backup_volume(repo, pool, "other").backup_id
    damage_manifest(repo, damaged)
    assert assign_backup(memory_kube, volume_backup(memory_kube, "vb1", "data"), fake_clock).outcome == "done"
    vb = memory_kube.get(VOLUME_BACKUP, "vb1", NS)
    assert run_backup(memory_kube, vb, node, "n1", fake_clock).outcome == "done"
    vb = memory_kube.get(VOLUME_BACKUP, "vb1", NS)
    assert vb["status"]["phase"] == "Completed"
    warned = [e for e in memory_kube.events_for(vb) if e["type"] == "Warning"]
    assert [e["reason"] for e in warned] == ["DamagedBackups"] and damaged in warned[0]["message"]


def test_cli_lists_prunes_collects_forgets_and_verifies_around_damage(engine_home: Path,
                                                                      scratch: Path) -> None:
    home, repo_dir = engine_home, scratch / "repo"
    ok(home, "pool", "create", "p", "--image-size", "1Gi")
    imgs = {}
    for name in ("a", "b"):
        ok(home, "volume", "create", name, "--size", "16Mi", "--mode", "block")
        imgs[name] = home / "pools" / "p" / "volumes" / f"{name}.img"
        write(imgs[name], 0, os.urandom(4 * MiB))
    ok(home, "target", "add", "t", "--path", str(repo_dir), "--format", "1")  # counts chunk objects

    def create(name: str) -> dict[str, Any]:
        r = run(home, "backup", "create", f"p/{name}", "-t", "t", "-q", "-o", "json")
        assert r.exit_code == 0, (r.stdout, r.stderr)
        made: dict[str, Any] = json.loads(r.stdout)
        made["stderr"] = r.stderr
        return made

    a1, b1 = create("a"), create("b")
    repo = Repository.open(DirectoryStore(repo_dir), PASSWORD)
    damage_manifest(repo, a1["backup_id"])

    write(imgs["b"], 0, os.urandom(2 * MiB))  # b1 now holds chunks b2 does not
    b2 = create("b")
    assert b2["parent"] == b1["backup_id"] and b2["status"] == "ok"
    assert f"backup {a1['backup_id']} cannot be read (damaged" in b2["stderr"]
    a2 = create("a")
    assert a2["parent"] is None

    items = json.loads(ok(home, "backup", "get", "-t", "t", "-o", "json"))["items"]
    listed = {i["backup_id"]: i for i in items}
    assert {k: v["status"] for k, v in listed.items()} == {
        a1["backup_id"]: "damaged", b1["backup_id"]: "ok", b2["backup_id"]: "ok", a2["backup_id"]: "ok"}
    assert "authentication failed" in listed[a1["backup_id"]]["reason"]
    table = ok(home, "backup", "get", "-t", "t")
    row = next(line for line in table.splitlines() if line.startswith(a1["backup_id"]))
    assert row.split()[-1] == "damaged"
    one = run(home, "backup", "get", a1["backup_id"], "-t", "t", "-o", "json")
    assert one.exit_code == 0 and json.loads(one.stdout)["status"] == "damaged"
    assert run(home, "backup", "describe", a1["backup_id"], "-t", "t").exit_code == 1
    bad = run(home, "backup", "verify", "-t", "t")
    assert bad.exit_code == 1 and f"manifest {a1['backup_id']}" in bad.stdout

    before = chunk_files(repo_dir)
    pruned = run(home, "backup", "prune", "-t", "t", "--keep-last", "1")
    assert pruned.exit_code == 0, pruned.stderr
    assert f"backup/{b1['backup_id']} removed" in pruned.stdout
    assert f"backup/{a1['backup_id']} quarantined" in pruned.stdout
    collected = run(home, "backup", "gc", "-t", "t", "--grace", "0")
    assert collected.exit_code == 0, collected.stderr
    assert " 0 deleted" in collected.stdout
    assert "2 kept because 1 backups cannot be read" in collected.stdout
    assert chunk_files(repo_dir) == before  # not even b1's chunks: a1 might name them
    listed = {i["backup_id"]: i["status"] for i in
              json.loads(ok(home, "backup", "get", "-t", "t", "-o", "json"))["items"]}
    assert listed[a1["backup_id"]] == "quarantined"

    with Lock(repo, "shared"):  # a backup running elsewhere: busy, exit 5
        assert run(home, "backup", "forget", a1["backup_id"], "-t", "t").exit_code == 5
    assert run(home, "backup", "forget", "20", "-t", "t").exit_code == 2  # ambiguous
    assert "forgotten" in ok(home, "backup", "forget", a1["backup_id"][-8:], "-t", "t")
    assert run(home, "backup", "forget", a1["backup_id"], "-t", "t").exit_code == 3
    assert " 2 deleted" in ok(home, "backup", "gc", "-t", "t", "--grace", "0")
    assert chunk_files(repo_dir) < before
    assert ok(home, "backup", "verify", "-t", "t", "--deep", "-q").strip().endswith(": ok")

    # one flipped byte in one chunk: deep verify names it and the backup it breaks
    victim = next(iter(repo.load_manifest(a2["backup_id"]).entries()))[1]
    damage_chunk(repo, victim)
    assert ok(home, "backup", "verify", "-t", "t").strip().endswith(": ok")  # quick: it is there
    deep = run(home, "backup", "verify", "-t", "t", "--deep", "-q")
    assert deep.exit_code == 1
    line = next(x for x in deep.stdout.splitlines() if x.startswith(f"corrupt {victim.hex()}"))
    assert chunk_key(victim) in line and "authentication failed" in line and a2["backup_id"] in line
    moved = run(home, "backup", "verify", "-t", "t", "--deep", "-q", "--quarantine")
    assert moved.exit_code == 1 and f"moved to quarantine/{chunk_key(victim)}" in moved.stdout
    a3 = create("a")  # reads the quarantined chunk again instead of copying its entry
    assert a3["parent"] == a2["backup_id"] and a3["stats"]["chunks_new"] == 1
    assert ok(home, "backup", "verify", "-t", "t", "--deep", "-q").strip().endswith(": ok")
    assert not (repo_dir / manifest_key(a1["backup_id"])).exists()
