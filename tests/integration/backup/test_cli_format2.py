"""`statehold target add` makes format 2 repositories; backup, incremental, restore,
verify, prune and gc work on them through the CLI; `backup migrate` converts a format 1
target in place with every backup still restorable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from statehold.cli.main import build_app

pytestmark = pytest.mark.root
MiB = 1 << 20
ENV = {"STATEHOLD_REPO_PASSWORD": "s3cret"}


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)], env=ENV)


def ok(home: Path, *args: str) -> str:
    r = run(home, *args)
    assert r.exit_code == 0, (args, r.exit_code, r.stdout, r.stderr, r.exception)
    return r.stdout


def same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while (x := fa.read(MiB)) == fb.read(MiB):
            if not x:
                return True
    return False


def test_format_2_target_backup_restore_verify_gc_and_migrate_a_format_1_target(engine_home: Path,
                                                                                scratch: Path) -> None:
    home = engine_home
    ok(home, "pool", "create", "p", "--image-size", "1Gi")
    ok(home, "volume", "create", "data", "--size", "48Mi", "--mode", "block")
    img = home / "pools" / "p" / "volumes" / "data.img"
    with open(img, "r+b") as f:
        f.write(os.urandom(20 * MiB))
    v2, v1 = scratch / "v2", scratch / "v1"
    assert "format 2" in ok(home, "target", "add", "t2", "--path", str(v2), "--pack-size", str(4 * MiB))
    assert "format 1" in ok(home, "target", "add", "t1", "--path", str(v1), "--format", "1")
    config = json.loads((v2 / "config").read_text())
    assert config["version"] == 2 and config["chunk_size"] == 256 << 10 and config["pack_size"] == 4 * MiB

    ids = {}
    for t in ("t1", "t2"):
        first = json.loads(ok(home, "backup", "create", "p/data", "-t", t, "-q", "-o", "json"))
        ids[t] = [first["backup_id"]]
    with open(img, "r+b") as f:
        f.seek(30 * MiB)
        f.write(os.urandom(MiB))
    for t in ("t1", "t2"):
        second = json.loads(ok(home, "backup", "create", "p/data", "-t", t, "-q", "-o", "json"))
        assert second["parent"] == ids[t][0]
        ids[t].append(second["backup_id"])
    assert not (v2 / "chunks").exists() and len(list((v2 / "packs").rglob("*"))) > 3
    assert (v1 / "chunks").is_dir()

    ok(home, "restore", ids["t2"][1], "-t", "t2", "--to-file", str(scratch / "r2.img"), "-q")
    assert same(img, scratch / "r2.img")
    assert ok(home, "backup", "verify", "-t", "t2", "--deep", "-q").strip().endswith(": ok")
    assert "1 removed" in ok(home, "backup", "prune", "-t", "t2", "--keep-last", "1")
    ok(home, "backup", "gc", "-t", "t2", "--grace", "0")
    ok(home, "restore", ids["t2"][1], "-t", "t2", "--to-file", str(scratch / "r2b.img"), "-q")
    assert same(img, scratch / "r2b.img")

    out = ok(home, "backup", "migrate", "-t", "t1", "-q")
    assert "converted to format 2" in out
    assert json.loads((v1 / "config").read_text())["version"] == 2
    assert not any(p.is_file() for p in (v1 / "chunks").rglob("*"))
    ok(home, "restore", ids["t1"][0], "-t", "t1", "--to-file", str(scratch / "r1a.img"), "-q")
    ok(home, "restore", ids["t1"][1], "-t", "t1", "--to-file", str(scratch / "r1b.img"), "-q")
    assert same(img, scratch / "r1b.img")
    assert ok(home, "backup", "verify", "-t", "t1", "--deep", "-q").strip().endswith(": ok")
    assert "already format 2" in ok(home, "backup", "migrate", "-t", "t1", "-q")
