"""``statehold demo`` (what ``make demo`` runs): twice in a fresh home, nothing left attached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.cli.helpers import cli, loops_backed_under, ok, subprocess_run

pytestmark = pytest.mark.root


def _rows(stdout: str) -> dict[str, str]:
    """The summary table as {step: row text}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[2] in ("ok", "FAILED"):
            rows[cells[0]] = f"{cells[1]} [{cells[2]}]"
    return rows


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]


def test_demo_runs_twice_and_detaches_everything(engine_home: Path) -> None:
    first = cli(engine_home, "demo")
    assert first.exit_code == 0, (first.stdout, first.stderr, first.exception)
    second = subprocess_run(engine_home, "demo")
    assert second.returncode == 0, (second.stdout, second.stderr)
    for out in (first.stdout, second.stdout):
        rows = _rows(out)
        assert set(rows) >= {"volume", "write", "snapshot", "modify", "clone", "expand", "diff",
                             "backup", "incremental", "restore", "verify"}
        assert all(r.endswith("[ok]") for r in rows.values()), rows
        original = rows["write"].split("sha256 ")[1].split()[0]
        assert f"sha256 {original} == original" in rows["clone"]
        assert "(online)" in rows["expand"]
        assert "== volume" in rows["restore"] and ", 0 problems" in rows["verify"]
    assert loops_backed_under(engine_home) == []
    assert _mounts_under(engine_home) == []
    # the pool stays on its image for the next run (exported, not destroyed)
    assert (engine_home / "disks" / "demo-0.img").exists()
    # the directory target keeps the last two backups, not every run's
    manifests = list((engine_home / "backups" / "demo").rglob("manifests/*"))
    assert len(manifests) == 2, manifests
    assert os.path.getsize(engine_home / "disks" / "demo-0.img") > 0


def test_demo_recovers_from_a_run_interrupted_with_volumes_mounted(engine_home: Path) -> None:
    ok(engine_home, "pool", "create", "demo", "--image-size", "4Gi")
    ok(engine_home, "volume", "create", "demo-data", "--size", "512Mi")
    ok(engine_home, "volume", "mount", "demo-data", str(engine_home / "mnt" / "demo-data"))
    ok(engine_home, "snapshot", "create", "demo-before", "--volume", "demo-data")
    result = cli(engine_home, "demo")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert all(r.endswith("[ok]") for r in _rows(result.stdout).values())
    assert loops_backed_under(engine_home) == []
    assert _mounts_under(engine_home) == []
