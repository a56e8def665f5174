"""The layers contract in .importlinter must name every top-level part of the package:
a new package left out of it would escape the "arrows only point down" rule silently."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layers() -> list[set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    section = cfg["importlinter:contract:layers"]
    assert section["type"] == "layers"
    return [{m.strip() for m in line.split("|")} for line in section["layers"].split("\n") if line.strip()]


def test_every_top_level_module_of_statehold_has_a_layer() -> None:
    src = ROOT / "src" / "statehold"
    parts = {f"statehold.{p.stem}" for p in src.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    layered = set().union(*_layers())
    assert parts - layered == set(), "add these to the layers contract in .importlinter"


def test_the_cli_is_the_top_layer_and_errors_the_bottom() -> None:
    layers = _layers()
    assert layers[0] == {"statehold.cli"}
    assert layers[-1] == {"statehold.errors"}
