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
    assert code == 1 and "quota" in err
    assert invoke("shared", "usage", "nope", "--root", root)[0] == 3
    code, _, err = invoke("shared", "get", "volumes", "--root", str(scratch / "missing"))
    assert code == 1 and "does not exist" in err
    assert [p.name for p in scratch.iterdir()] == [".statehold"]
