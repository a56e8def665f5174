"""`statehold backup verify --read-data-subset` end to end on directory targets: three
slices read every pack (format 2) or chunk object (format 1) of a real volume's backup
once between them; a byte flipped on disk in one pack fails only the slice holding it,
naming that pack's chunk and the backup (exit 1); a percentage prints the seed it used
and the same seed reads the same share again."""

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


def test_slices_cover_the_data_once_and_a_damaged_pack_fails_its_slice(engine_home: Path,
                                                                       scratch: Path) -> None:
    home = engine_home
    ok(home, "pool", "create", "p", "--image-size", "1Gi")
    ok(home, "volume", "create", "data", "--size", "24Mi", "--mode", "block")
    with open(home / "pools" / "p" / "volumes" / "data.img", "r+b") as f:
        f.write(os.urandom(12 * MiB))
    ok(home, "target", "add", "t2", "--path", str(scratch / "v2"), "--pack-size", str(MiB))
    ok(home, "target", "add", "t1", "--path", str(scratch / "v1"), "--format", "1")
    backup = {t: json.loads(ok(home, "backup", "create", "p/data", "-t", t, "-q", "-o", "json"))
              ["backup_id"] for t in ("t1", "t2")}

    out = ok(home, "backup", "verify", "-t", "t1", "-q", "--read-data-subset", "25%", "--seed", "9")
    assert "read data subset 25% (seed 9):" in out
    again = ok(home, "backup", "verify", "-t", "t1", "-q", "--read-data-subset", "25%", "--seed", "9")
    assert again == out

    for t, objects in (("t2", scratch / "v2" / "packs"), ("t1", scratch / "v1" / "chunks")):
        stored = [p for p in objects.rglob("*") if p.is_file()]
        reports = [json.loads(ok(home, "backup", "verify", "-t", t, "-q", "-o", "json",
                                 "--read-data-subset", f"{n}/3")) for n in (1, 2, 3)]
        assert all(r["subset"]["total"] == len(stored) for r in reports)
        assert sum(r["subset"]["read"] for r in reports) == len(stored)
        assert sum(r["subset"]["bytes_read"] for r in reports) == sum(p.stat().st_size for p in stored)

        victim = max(stored, key=lambda p: p.stat().st_size)
        with open(victim, "r+b") as f:  # a flipped byte in the first chunk blob
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0x01]))
        failed = []
        for n in (1, 2, 3):
            r = run(home, "backup", "verify", "-t", t, "-q", "--read-data-subset", f"{n}/3")
            if r.exit_code != 0:
                failed.append(n)
                assert f"affects {backup[t]}" in r.stdout and victim.name in r.stdout, r.stdout
        assert len(failed) == 1, failed

    assert run(home, "backup", "verify", "-t", "t1", "--deep", "--read-data-subset", "1/2").exit_code != 0
    assert run(home, "backup", "verify", "-t", "t1", "--read-data-subset", "7/5").exit_code != 0
