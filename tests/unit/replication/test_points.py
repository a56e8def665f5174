"""Point ids, their order, and the names derived from volumes."""

from __future__ import annotations

import re

import pytest

from statehold.engine.names import validate_name
from statehold.errors import InvalidArgument
from statehold.replication.points import (
    common_base,
    make_point,
    newest,
    node_label,
    parse_point,
    snapshot_name,
)

U64 = (1 << 64) - 1


def test_points_order_by_epoch_then_seq_not_as_text() -> None:
    assert newest(["e2-1", "e1-99", "e10-1", None]) == "e10-1"
    assert newest(["e1-9", "e1-10"]) == "e1-10"
    assert newest([]) is None


@pytest.mark.parametrize("bad", ["", "e0-1", "e1-0", "e01-1", "E1-1", "e1-1-1", "e1", "1-1",
                                 f"e{U64 + 1}-1", "e1-1 "])
def test_malformed_point_ids_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_point(bad)


def test_make_point_round_trips() -> None:
    assert parse_point(make_point(U64, U64)) == (U64, U64)


def test_common_base_is_the_newest_shared_point() -> None:
    assert common_base(["e1-1", "e1-2", "e2-1"], ["e1-2", "e1-1", "e3-1"]) == "e1-2"
    assert common_base(["e1-1"], ["e1-2"]) is None
    assert common_base([], []) is None


def test_snapshot_names_are_engine_names_even_at_the_longest() -> None:
    name = snapshot_name("v" * 63, make_point(U64, U64))
    assert len(name) <= 63
    assert validate_name(name) == name
    assert snapshot_name("a", "e1-1") != snapshot_name("b", "e1-1")
    assert snapshot_name("a", "e1-1").startswith("rp-")


def test_node_label_is_a_qualified_name() -> None:
    label = node_label("pvc-0b7d2c52-1f7e-4c7b-9a34-0d9fd8a2a1e1")
    prefix, _, name = label.partition("/")
    assert prefix == "copy.statehold.io"
    assert re.fullmatch(r"[0-9a-f]{16}", name)
