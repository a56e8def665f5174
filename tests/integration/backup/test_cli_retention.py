"""`statehold backup prune` with the calendar rules and origins: `--origin manual` judges
only the backups made by hand, `--origin schedule/<ns>/<name>` only that schedule's;
without it, every backup of the volume is judged, whoever made it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.cli.main import build_app

MiB = 1 << 20
ENV = {"STATEHOLD_REPO_PASSWORD": "s3cret"}
NIGHTLY = "schedule/databases/nightly"


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)], env=ENV)


def ok(home: Path, *args: str) -> str:
    r = run(home, *args)
    assert r.exit_code == 0, (args, r.exit_code, r.stdout, r.stderr, r.exception)
    return r.stdout


def test_prune_by_origin_and_calendar_rules_through_the_cli(tmp_path: Path) -> None:
    home, repo_dir = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    ok(home, "target", "add", "t1", "--path", str(repo_dir))
    repo = Repository.open(DirectoryStore(repo_dir), "s3cret")
    made: dict[str, list[str]] = {"manual": [], NIGHTLY: []}
    for i in range(6):
        img = tmp_path / f"img{i}"
        with open(img, "wb") as f:
            f.truncate(2 * MiB)
            f.write(bytes([i + 1]) * 4096)
        origin = NIGHTLY if i % 2 else ""
        made[origin or "manual"].append(
            create_backup(repo, img, volume="p/db", origin=origin).backup_id)

    out = ok(home, "backup", "prune", "-t", "t1", "--keep-last", "1", "--origin", NIGHTLY)
    assert out.strip().endswith("1 kept, 2 removed")
    assert sorted(repo.backup_ids()) == sorted(made["manual"] + made[NIGHTLY][-1:])
    out = ok(home, "backup", "prune", "-t", "t1", "--within", "2w", "--yearly", "1",
             "--origin", "manual", "--dry-run")
    assert out.strip().endswith("3 kept, 0 would be removed")
    refused = run(home, "backup", "prune", "-t", "t1", "--within", "1y")
    assert refused.exit_code == 2 and "h, d or w" in refused.stderr
    out = ok(home, "backup", "prune", "-t", "t1", "--keep-last", "1")  # every origin
    assert out.strip().endswith("1 kept, 3 removed")
    assert repo.backup_ids() == made[NIGHTLY][-1:]  # the newest of all, whoever made it
