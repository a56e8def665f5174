"""The commands the user guide and the README show exist, with the options they show.

Every ``statehold ...`` line in a code block of docs/usage.md and README.md is checked
against the real command tree: the subcommand path must exist and each ``--option`` (or
``-o``) must be one that command takes. Docs that drift from ``--help`` fail here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from statehold.cli.main import build_app

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "docs" / "usage.md", ROOT / "README.md"]


def command_lines(text: str) -> list[str]:
    """``statehold`` invocations in fenced sh/console blocks (continuations joined)."""
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|console|bash)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            line = re.sub(r"^(\.venv/bin/|kubectl )", "", line)
            if line.startswith("statehold "):
                lines.append(line.split(" | ")[0])
    return lines


CASES = [(doc.name, line) for doc in DOCS for line in command_lines(doc.read_text())]


def test_the_docs_show_the_backup_commands() -> None:
    shown = {" ".join(line.split()[:2]) for _, line in CASES}
    for cmd in ("statehold target", "statehold backup", "statehold restore", "statehold pool"):
        assert cmd in shown
    readme = [line for doc, line in CASES if doc == "README.md"]
    assert any(line.startswith("statehold restore ") for line in readme)


@pytest.mark.parametrize(("doc", "line"), CASES, ids=[f"{d}:{line[:50]}" for d, line in CASES])
def test_documented_command_exists_with_its_options(doc: str, line: str) -> None:
    code = line.split(" #")[0]
    tokens = [t.strip("[]") for t in shlex.split(code)][1:]
    cmd: Any = typer.main.get_command(build_app())  # typer vendors click: duck-typed
    path = ["statehold"]
    while hasattr(cmd, "commands") and tokens and tokens[0] in cmd.commands:
        path.append(tokens[0])
        cmd = cmd.commands[tokens.pop(0)]
    assert not hasattr(cmd, "commands"), f"{doc}: {' '.join(path)} needs a subcommand: {line}"
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for token in tokens:
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            assert token.split("=")[0] in known, f"{doc}: {' '.join(path)} has no {token}: {line}"
