"""Running the ``statehold`` command in tests: in-process (CliRunner) and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from statehold.cli.main import build_app

STATEHOLD = Path(sys.executable).parent / "statehold"


def cli(home: Path, *args: str) -> Result:
    """Run ``statehold <args> --home <home>`` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(build_app(), [*args, "--home", str(home)])


def ok(home: Path, *args: str) -> str:
    """Run and require exit 0; return stdout."""
    result = cli(home, *args)
    assert result.exit_code == 0, (args, result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def as_json(home: Path, *args: str) -> Any:
    return json.loads(ok(home, *args, "-o", "json"))


def loops_backed_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies under ``root`` (what a test must not leak)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)").startswith(prefix):
            found.append(f"/dev/{entry.name}")
    return found


def subprocess_run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``statehold`` script as a real process."""
    return subprocess.run(
        [str(STATEHOLD), *args, "--home", str(home)], capture_output=True, text=True, timeout=120,
        check=False,
    )
