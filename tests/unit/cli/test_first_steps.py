"""What a new user hit on the first day: failed commands that still created things.

No root needed: directory targets, an empty home, no pools. Each test fails on the code
before the fix (the defect), then holds the fix in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from statehold.cli.main import build_app

ENV = {"STATEHOLD_REPO_PASSWORD": "pw"}


def run(*args: str) -> Result:
    return CliRunner(env=ENV).invoke(build_app(), list(args))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_target_add_with_a_taken_name_is_already_exists_and_creates_nothing(scratch: Path) -> None:
    home, first, second = scratch / "home", scratch / "repo-1", scratch / "repo-2"
    assert run("target", "add", "t", "--path", str(first), "--home", str(home)).exit_code == 0
    before = tree(scratch)

    result = run("target", "add", "t", "--path", str(second), "--home", str(home))

    assert result.exit_code == 4, result.output
    assert "error: backup target 't' already points at" in result.stderr
    assert not second.exists()
    assert tree(scratch) == before


def test_target_add_again_with_the_same_definition_is_unchanged(scratch: Path) -> None:
    home, repo = scratch / "home", scratch / "repo"
    assert run("target", "add", "t", "--path", str(repo), "--home", str(home)).exit_code == 0
    again = run("target", "add", "t", "--path", str(repo), "--home", str(home))
    assert again.exit_code == 0 and "unchanged (opened existing repository" in again.stdout


def test_volume_mount_of_a_missing_volume_is_not_found_and_creates_no_directory(scratch: Path) -> None:
    home, target = scratch / "home", scratch / "mnt" / "db"
    home.mkdir()

    result = run("volume", "mount", "nosuch", str(target), "--home", str(home))

    assert result.exit_code == 3, result.output
    assert "nosuch" in result.stderr
    assert not (scratch / "mnt").exists()


READ_ONLY = [
    ("pool", "get"),
    ("pool", "describe", "p"),
    ("volume", "get"),
    ("volume", "describe", "v"),
    ("snapshot", "get"),
    ("target", "get"),
    ("backup", "get", "--target", "t"),
    ("backup", "describe", "b", "--target", "t"),
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: "-".join(a[:2]))
def test_read_only_command_on_a_missing_home_is_not_found_and_creates_nothing(
    scratch: Path, args: tuple[str, ...]
) -> None:
    typo = scratch / "hmoe"

    result = run(*args, "--home", str(typo))

    assert result.exit_code == 3, result.output
    assert str(typo) in result.stderr and result.stderr.startswith("error: ")
    assert not typo.exists()


@pytest.mark.parametrize("args", [
    ("volume", "delete", "v"),
    ("volume", "mount", "v", "{scratch}/mnt/v"),
    ("snapshot", "create", "s", "--volume", "v"),
    ("pool", "export", "p"),
    ("pool", "delete", "p"),
], ids=lambda a: "-".join(a[:2]))
def test_command_on_existing_objects_in_a_missing_home_creates_nothing(
    scratch: Path, args: tuple[str, ...]
) -> None:
    typo = scratch / "hmoe"
    result = run(*(a.format(scratch=scratch) for a in args), "--home", str(typo))
    assert result.exit_code == 3, result.output
    assert str(typo) in result.stderr
    assert tree(scratch) == []


def test_home_from_the_environment_is_checked_too(scratch: Path) -> None:
    typo = scratch / "hmoe"
    result = CliRunner(env={"STATEHOLD_HOME": str(typo)}).invoke(build_app(), ["volume", "get"])
    assert result.exit_code == 3 and str(typo) in result.stderr
    assert not typo.exists()
