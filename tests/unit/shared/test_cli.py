"""``statehold shared ...`` on a plain-directory root: output, exit codes, nothing leaked."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from statehold.cli.shared import register


def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _cb() -> None:
        """test root"""

    register(root)
    return root


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_create_list_usage_expand_snapshot_delete(scratch: Path) -> None:
    root = str(scratch)
    code, out, _ = invoke("shared", "create", "data", "--size", "1Mi", "--root", root, "--policy", "archive")
    assert code == 0 and "created" in out
    code, out, _ = invoke("shared", "get", "volumes", "--root", root, "-o", "json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["data"] and rows[0]["policy"] == "archive"
    (scratch / "data" / "big").write_bytes(b"x" * (2 * 1024 * 1024))
    code, out, _ = invoke("shared", "usage", "data", "--root", root)
    assert code == 4 and "OVER SIZE" in out
    assert invoke("shared", "expand", "data", "--size", "8Mi", "--root", root)[0] == 0
    assert invoke("shared", "usage", "data", "--root", root)[0] == 0
    code, out, _ = invoke("shared", "snapshot", "data", "snap", "--root", root)
    assert code == 0 and "snap" in out
    code, out, _ = invoke("shared", "get", "snapshots", "--root", root)
    assert code == 0 and "snap" in out.splitlines()[1]
    code, out, _ = invoke("shared", "delete", "data", "--root", root)
    assert code == 0 and ".statehold/archive/data-" in out


def test_bad_input_exit_codes(scratch: Path) -> None:
    root = str(scratch)
    code, _, err = invoke("shared", "create", "../x", "--size", "1Mi", "--root", root)
    assert code == 2 and "traversal" in err
    assert invoke("shared", "create", "x", "--size", "lots", "--root", root)[0] == 2
    assert invoke("shared", "create", "x", "--size", "1Mi", "--root", root, "--policy", "shred")[0] == 2
    code, _, err = invoke("shared", "create", "x", "--size", "1Mi", "--root", root, "--enforce")
    assert code == 5 and "quota" in err  # FailedPrecondition: the one exit-code table
    assert invoke("shared", "usage", "nope", "--root", root)[0] == 3
    code, _, err = invoke("shared", "get", "volumes", "--root", str(scratch / "missing"))
    assert code == 5 and "does not exist" in err
    assert [p.name for p in scratch.iterdir()] == [".statehold"]


def test_backup_and_restore_commands(scratch: Path) -> None:
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.backup.targets import Target, TargetBook

    home, share = scratch / "home", scratch / "share"
    share.mkdir()
    TargetBook(home).add(Target(name="t1", kind="dir", path=str(scratch / "repo")))
    Repository.init(DirectoryStore(scratch / "repo"), "pw")
    env = {"STATEHOLD_HOME": str(home), "STATEHOLD_REPO_PASSWORD": "pw"}
    runner = CliRunner(env=env)
    created = runner.invoke(app(), ["shared", "create", "data", "--size", "4Mi", "--root", str(share)])
    assert created.exit_code == 0
    (share / "data" / "f").write_bytes(b"precious")
    result = runner.invoke(app(), ["shared", "backup", "data", "--target", "t1", "--root", str(share)])
    assert result.exit_code == 0, result.stderr
    backup_id = result.stdout.split()[1]
    assert "shared/" in result.stdout
    result = runner.invoke(app(), ["shared", "restore", backup_id[:12], "data-2", "--target", "t1",
                                   "--root", str(share)])
    assert result.exit_code == 0, result.stderr
    assert (share / "data-2" / "f").read_bytes() == b"precious"
    bad = CliRunner(env={**env, "STATEHOLD_REPO_PASSWORD": ""}).invoke(
        app(), ["shared", "backup", "data", "--target", "t1", "--root", str(share)])
    assert bad.exit_code == 2 and "password" in bad.stderr
    missing = runner.invoke(app(), ["shared", "backup", "data", "--target", "nope", "--root", str(share)])
    assert missing.exit_code == 3
