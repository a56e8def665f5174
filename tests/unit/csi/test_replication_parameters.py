"""StorageClass parameters of replicated volumes (replicas, rpo): parsing, and what a
replicated volume says about itself (topology segment and volume context)."""

from __future__ import annotations

import pytest

from statehold.controller import replication_records
from statehold.csi import backend_local
from statehold.csi.backend_local import (
    parse_rpo,
    replicated_view,
    replication_labels,
    replication_parameters,
)
from statehold.errors import InvalidArgument


@pytest.mark.parametrize(("text", "seconds"), [
    ("15s", 15), ("1m", 60), ("1m30s", 90), ("2h", 7200), ("1h0m5s", 3605), (" 30s ", 30),
    ("24h", 86400)])
def test_rpo_is_a_duration(text: str, seconds: int) -> None:
    assert parse_rpo(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "0s", "25h", "1.5s", "500ms", "1s1m", "-5s",
                                  "fifteen", "1d"])
def test_bad_rpo_is_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument, match="rpo"):
        parse_rpo(text)


def test_defaults_are_one_copy_and_fifteen_seconds() -> None:
    assert replication_parameters({}) == (1, 15)
    assert replication_parameters({"replicas": "3", "rpo": "1m"}) == (3, 60)
    assert replication_labels({}) == {} and replication_labels({"replicas": "1"}) == {}
    assert replication_labels({"replicas": "2"}) == {"statehold.io/replicas": "2",
                                                     "statehold.io/rpo-seconds": "15"}


@pytest.mark.parametrize("value", ["0", "17", "two", "-1", "2.0", ""])
def test_bad_replicas_is_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match="replicas"):
        replication_parameters({"replicas": value})


def test_a_bad_rpo_is_refused_even_for_one_copy() -> None:
    with pytest.raises(InvalidArgument):
        replication_parameters({"replicas": "1", "rpo": "soon"})


def test_a_replicated_volume_is_reachable_through_its_copy_label() -> None:
    assert replicated_view("fast/pvc-1", {}, "n1") is None
    assert replicated_view("fast/pvc-1", {"statehold.io/replicas": "1"}, "n1") is None
    segment, context = replicated_view(  # type: ignore[misc]
        "fast/pvc-1", {"statehold.io/replicas": "2", "statehold.io/rpo-seconds": "30"}, "n1")
    # h16 = the first 16 hex digits of sha256("fast/pvc-1") (replication.md §1)
    import hashlib
    h16 = hashlib.sha256(b"fast/pvc-1").hexdigest()[:16]
    assert segment == {f"copy.statehold.io/{h16}": "true"}
    assert context == {"statehold.io/replicas": "2", "statehold.io/rpo-seconds": "30",
                       "statehold.io/node": "n1"}


def test_the_operator_reads_the_keys_the_plugin_writes() -> None:
    pv = {"spec": {"capacity": {"storage": "1Gi"},
                   "csi": {"driver": "csi.statehold.io", "volumeHandle": "fast/pvc-1",
                           "volumeAttributes": backend_local.replicated_view(
                               "fast/pvc-1", backend_local.replication_labels(
                                   {"replicas": "3", "rpo": "1m"}), "n1")[1]}},  # type: ignore[index]
          "metadata": {"name": "pvc-1"}}
    record = replication_records.record_for_pv(pv)
    assert record is not None and record["spec"]["replicas"] == 3
    assert record["spec"]["rpoSeconds"] == 60
    assert replication_records.first_primary(pv) == "n1"


def test_the_user_guide_storage_class_is_valid_and_accepted() -> None:
    from pathlib import Path

    from tests.unit.kube.validation import validate_object, yaml_blocks

    guide = Path(__file__).resolve().parents[3] / "docs" / "replication.md"
    (sc,) = [d for d in yaml_blocks(guide) if d["kind"] == "StorageClass"]
    validate_object(sc)
    assert replication_parameters(sc["parameters"]) == (2, 30)
