"""CO names -> engine names, ids, and the capacity-range size choice."""

from __future__ import annotations

import pytest

from statehold.csi import naming
from statehold.csi.backend_local import DEFAULT_SIZE, choose_size
from statehold.engine.names import validate_name
from statehold.errors import NotFound, OutOfRange

MiB = 1024 * 1024


def test_label_names_are_kept() -> None:
    assert naming.engine_name("pvc-0d1e5c4a-8f") == "pvc-0d1e5c4a-8f"


@pytest.mark.parametrize("name", ["Sanity-Volume-ABC", "a/b/../c", "x" * 200, "ünï", "..", "-"])
def test_other_names_map_to_valid_distinct_deterministic_labels(name: str) -> None:
    mapped = naming.engine_name(name)
    assert validate_name(mapped) == mapped
    assert naming.engine_name(name) == mapped
    assert naming.engine_name(name + "2") != mapped


@pytest.mark.parametrize("bad", ["", "nopool", "/v", "p/", "p/a/b"])
def test_malformed_ids_name_nothing(bad: str) -> None:
    with pytest.raises(NotFound):
        naming.split_id(bad)


def test_split_join_roundtrip() -> None:
    assert naming.split_id(naming.join_id("fast", "pvc-1")) == ("fast", "pvc-1")


def test_sizes_round_up_to_mib_and_respect_fs_minimum() -> None:
    assert choose_size(1, 0, MiB) == MiB
    assert choose_size(MiB + 1, 0, MiB) == 2 * MiB
    assert choose_size(10 * MiB, 0, 300 * MiB) == 300 * MiB
    assert choose_size(0, 0, MiB) == DEFAULT_SIZE
    assert choose_size(0, 5 * MiB + 7, MiB) == 5 * MiB  # limit only: largest whole MiB under it


@pytest.mark.parametrize(
    ("required", "limit", "floor"),
    [(MiB + 1, MiB + 1, MiB), (0, 100 * MiB, 300 * MiB), (0, MiB - 1, MiB), (10 * MiB, 200 * MiB, 300 * MiB)],
)
def test_no_fitting_size_is_out_of_range(required: int, limit: int, floor: int) -> None:
    with pytest.raises(OutOfRange):
        choose_size(required, limit, floor)
