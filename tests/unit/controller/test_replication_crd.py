"""The ReplicatedVolume CRD and the StoragePool decommission field, as admission sees them."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.schemas import validate_custom_resource
from statehold.errors import InvalidArgument


def rv(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "statehold.io/v1alpha1", "kind": "ReplicatedVolume",
                           "metadata": {"name": "pvc-1"}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


SPEC = {"volumeHandle": "fast/pvc-1", "replicas": 2, "size": 1 << 30}


def test_a_record_is_defaulted_to_an_rpo_of_15_seconds() -> None:
    assert validate_custom_resource(rv(SPEC))["spec"]["rpoSeconds"] == 15


def test_a_record_carries_copies_with_point_ids() -> None:
    status = {"epoch": 2, "primary": "n2", "moving": {"to": "n3", "epoch": 2},
              "copies": [{"node": "n1", "pool": "fast", "role": "stale", "point": "e1-7",
                          "lagSeconds": 0.5, "state": "Stale"}]}
    validate_custom_resource(rv(SPEC, status))


@pytest.mark.parametrize(("spec", "status", "why"), [
    ({**SPEC, "promote": {"node": "n2"}, "move": {"to": "n3"}}, None, "at once"),
    ({**SPEC, "replicas": 0}, None, "replicas"),
    ({**SPEC, "rpoSeconds": 0}, None, "rpoSeconds"),
    ({**SPEC, "promote": {"node": "N_2"}}, None, "node"),
    (SPEC, {"epoch": 0}, "epoch"),
    (SPEC, {"epoch": 1, "copies": [{"node": "n1", "point": "e0-1"}]}, "point"),
    (SPEC, {"epoch": 1, "copies": [{"node": "n1", "role": "leader"}]}, "role"),
])
def test_bad_records_are_refused(spec: dict[str, Any], status: dict[str, Any] | None,
                                 why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        validate_custom_resource(rv(spec, status))


def test_the_epoch_never_decreases() -> None:
    old = rv(SPEC, {"epoch": 3, "primary": "n1"})
    validate_custom_resource(rv(SPEC, {"epoch": 4, "primary": "n2"}), old)
    with pytest.raises(InvalidArgument, match="never decreases"):
        validate_custom_resource(rv(SPEC, {"epoch": 2, "primary": "n2"}), old)


def test_a_storage_pool_is_not_retiring_unless_asked() -> None:
    pool = {"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
            "metadata": {"name": "p"}, "spec": {"node": "n1", "devices": ["/dev/sdb"]}}
    assert validate_custom_resource(pool)["spec"]["decommission"] is False
    pool["spec"]["decommission"] = True
    assert validate_custom_resource(pool)["spec"]["decommission"] is True
