"""`statehold target|backup|restore` against a real file-backed pool and a directory target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.packs import chunk_key
from statehold.backup.repository import Repository
from statehold.cli.main import build_app

pytestmark = pytest.mark.root
MiB = 1 << 20
ENV = {"STATEHOLD_REPO_PASSWORD": "s3cret"}


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)], env=env or ENV)


def ok(home: Path, *args: str) -> str:
    r = run(home, *args)
    assert r.exit_code == 0, (args, r.exit_code, r.stdout, r.stderr, r.exception)
    return r.stdout


def test_backup_incremental_restore_verify_prune_gc_through_the_cli(engine_home: Path, scratch: Path) -> None:
    home = engine_home
    ok(home, "pool", "create", "p", "--image-size", "1Gi")
    ok(home, "volume", "create", "data", "--size", "48Mi", "--mode", "block")
    img = home / "pools" / "p" / "volumes" / "data.img"
    with open(img, "r+b") as f:
        f.write(os.urandom(20 * MiB))
    repo_dir = scratch / "repo"
    # format 1 (one object per chunk): the damage below deletes one chunk's object
    added = ok(home, "target", "add", "t1", "--path", str(repo_dir), "--format", "1")
    assert added.startswith("target/t1 added")
    assert "unchanged" in ok(home, "target", "add", "t1", "--path", str(repo_dir))
    wrong = run(home, "target", "add", "t1", "--path", str(repo_dir), env={"STATEHOLD_REPO_PASSWORD": "x"})
    assert wrong.exit_code == 8 and "wrong repository password" in wrong.stderr
    assert json.loads(ok(home, "target", "get", "-o", "json"))["items"][0]["path"] == str(repo_dir)

    first = json.loads(ok(home, "backup", "create", "p/data", "-t", "t1", "-q", "-o", "json"))
    with open(img, "r+b") as f:
        f.seek(30 * MiB)
        f.write(b"second" * 1000)
    second = json.loads(ok(home, "backup", "create", "data", "-t", "t1", "-q", "-o", "json"))
    assert second["parent"] == first["backup_id"]
    assert second["stats"]["bytes_read"] <= MiB
    snaps = [s["name"] for s in json.loads(ok(home, "snapshot", "get", "-o", "json"))["items"]]
    assert len(snaps) == 1 and snaps[0] == second["snapshot"].split("/")[1]  # old parent dropped

    listed = json.loads(ok(home, "backup", "get", "-t", "t1", "-o", "json"))["items"]
    assert [b["backup_id"] for b in listed] == [first["backup_id"], second["backup_id"]]
    assert "incremental from" in ok(home, "backup", "describe", second["backup_id"][-8:], "-t", "t1")

    restored = ok(home, "restore", second["backup_id"], "-t", "t1", "--to", "p/copy", "-q")
    assert "restored from backup" in restored
    copy = home / "pools" / "p" / "volumes" / "copy.img"
    with open(img, "rb") as a, open(copy, "rb") as b:
        assert a.read() == b.read()
    taken = run(home, "restore", second["backup_id"], "-t", "t1", "--to", "p/copy", "-q")
    assert taken.exit_code == 4

    assert ok(home, "backup", "verify", "-t", "t1", "--deep", "-q").strip().endswith(": ok")
    assert "1 removed" in ok(home, "backup", "prune", "-t", "t1", "--keep-last", "1")
    assert "deleted" in ok(home, "backup", "gc", "-t", "t1", "--grace", "0")
    refused = run(home, "backup", "prune", "-t", "t1")
    assert refused.exit_code == 2

    repo = Repository.open(DirectoryStore(repo_dir), "s3cret")
    victim = next(iter(repo.load_manifest(second["backup_id"]).entries()))[1]
    (repo_dir / chunk_key(victim)).unlink()
    bad = run(home, "backup", "verify", "-t", "t1")
    assert bad.exit_code == 1
    assert victim.hex() in bad.stdout and second["backup_id"] in bad.stderr
    failed = run(home, "restore", second["backup_id"], "-t", "t1", "--to", "p/again", "-q")
    assert failed.exit_code == 3 and victim.hex() in failed.stderr
    vols = [v["name"] for v in json.loads(ok(home, "volume", "get", "-o", "json"))["items"]]
    assert "again" not in vols  # a failed restore leaves no volume behind


def test_missing_password_and_unknown_target_are_clear_errors(engine_home: Path) -> None:
    r = run(engine_home, "backup", "get", "-t", "nope")
    assert r.exit_code == 3 and "not defined" in r.stderr
    r = run(engine_home, "target", "add", "t", "--path", "/var/tmp/x", env={"STATEHOLD_REPO_PASSWORD": ""})
    assert r.exit_code == 2 and "password" in r.stderr


def test_tree_backup_and_restore_through_the_cli(scratch: Path) -> None:
    home = scratch / "home"
    src = scratch / "site"
    (src / "img").mkdir(parents=True)
    (src / "img" / "logo.png").write_bytes(os.urandom(100_000))
    (src / "index.html").write_text("<h1>hi</h1>\n")
    ok(home, "target", "add", "t", "--path", str(scratch / "repo"))
    made = json.loads(ok(home, "backup", "create-tree", str(src), "-t", "t", "--volume", "shared/site",
                         "-q", "-o", "json"))
    assert made["kind"] == "tree"
    out = scratch / "restored"
    ok(home, "restore", made["backup_id"], "-t", "t", "--to-dir", str(out))
    assert (out / "img" / "logo.png").read_bytes() == (src / "img" / "logo.png").read_bytes()
    assert (out / "index.html").read_text() == "<h1>hi</h1>\n"
    wrong = run(home, "restore", made["backup_id"], "-t", "t", "--to-file", str(scratch / "x.img"))
    assert wrong.exit_code == 2
