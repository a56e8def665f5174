"""The test tiers' own rules: root tests are never silently skipped.

Run without root, a selection holding root tests is an error (`make test` as another user
fails); a unit-only selection needs no root. Calls the top-level conftest's hook directly
with a faked effective uid, so it runs the same as root or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import conftest


@dataclass
class Item:
    nodeid: str
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.markers else None


def collect(uid: int, items: list[Item], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest.os, "geteuid", lambda: uid)
    conftest.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]


def test_root_tests_without_root_are_an_error_not_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [Item("tests/unit/test_a.py::t"), Item("tests/integration/test_b.py::t", {"root"})]
    with pytest.raises(pytest.UsageError, match=r"1 selected tests need root .*test_b.py::t"):
        collect(1000, items, monkeypatch)


def test_unit_only_selection_needs_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    collect(1000, [Item("tests/unit/test_a.py::t")], monkeypatch)


def test_as_root_everything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [Item("tests/integration/test_b.py::t", {"root"})]
    collect(0, items, monkeypatch)
    assert items == [Item("tests/integration/test_b.py::t", {"root"})]  # nothing marked skip


def test_markers_are_strict() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(conftest.__file__).parents[1] / "pyproject.toml").read_text())
    assert "--strict-markers" in pyproject["tool"]["pytest"]["ini_options"]["addopts"].split()
