"""The node registry (home/node.json): read without root, refused when damaged or too new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from statehold.engine.node import Node
from statehold.errors import Corrupt, FailedPrecondition, NotFound


def test_empty_home_has_no_pools(tmp_path: Path) -> None:
    node = Node(tmp_path / "home")
    assert node.pools() == [] and node.errors == {}
    with pytest.raises(NotFound):
        node.pool("p")
    node.close()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"pools": []}'])
def test_damaged_registry_is_corrupt(tmp_path: Path, text: str) -> None:
    (tmp_path / "node.json").write_text(text)
    with pytest.raises(Corrupt):
        Node(tmp_path)


def test_newer_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"version": 99, "pools": {}}))
    with pytest.raises(FailedPrecondition):
        Node(tmp_path)
