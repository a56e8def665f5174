"""StoragePool space (issue 14, part 4): spec.thresholds reach the node's pool, the agent
reports usage, the SpacePressure condition and one Event per change of level, and above the
critical mark the pool itself refuses new volumes. A real pool on a loop device; the API
is the in-memory one, which admits objects with the CRD's own schema."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from statehold.controller.conditions import find
from statehold.controller.pools import reconcile_pool
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.errors import InvalidArgument, OutOfCapacity
from statehold.kube.kinds import STORAGE_POOL
from statehold.kube.memory import MemoryKube

pytestmark = pytest.mark.root
NODE = "n1"


def reconcile(kube: MemoryKube, node: Node, clock: Any) -> dict[str, Any]:
    result = reconcile_pool(kube, kube.get(STORAGE_POOL, "fast"), node, NODE, clock)
    assert result.outcome == "done", result
    return kube.get(STORAGE_POOL, "fast")


def pressure(obj: dict[str, Any]) -> tuple[str, str, str]:
    cond = find(obj["status"]["conditions"], "SpacePressure")
    assert cond is not None
    return cond["status"], cond["reason"], cond["message"]


def space_events(kube: MemoryKube, obj: dict[str, Any]) -> list[tuple[str, str]]:
    reasons = {"SpaceWarning", "SpaceCritical", "PoolFull", "SpaceRecovered"}
    return [(e["type"], e["reason"]) for e in kube.events_for(obj) if e["reason"] in reasons]


def set_marks(kube: MemoryKube, warning: int, critical: int) -> None:
    kube.patch(STORAGE_POOL, "fast", {"spec": {"thresholds": {
        "warningPercent": warning, "criticalPercent": critical}}})


def test_thresholds_raise_conditions_and_events_and_critical_refuses_new_volumes(
        memory_kube: MemoryKube, node: Node, engine_home: Path, fake_clock: Any) -> None:
    memory_kube.create({
        "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "fast"},
        "spec": {"node": NODE, "directory": str(engine_home / "pool-images"), "imageSize": "1Gi"}})
    obj = reconcile(memory_kube, node, fake_clock)
    assert obj["spec"]["thresholds"] == {"warningPercent": 80, "criticalPercent": 90}  # defaults
    assert obj["status"]["spaceLevel"] == "ok" and 0 < obj["status"]["usedPercent"] < 80
    assert pressure(obj)[:2] == ("False", "BelowWarning")
    assert space_events(memory_kube, obj) == []
    pool = node.pool("fast")
    assert (pool.thresholds().warning, pool.thresholds().critical) == (80, 90)

    # some data, then marks below it: what filling up looks like to the operator
    pool.create_volume("data", 256 * MiB, mode=VolumeMode.BLOCK, fs=None)
    with open(pool.attach("data"), "r+b") as dev:
        for i in range(96):
            dev.write(bytes([i + 1]) * MiB)
        dev.flush()
        os.fsync(dev.fileno())
    used = pool.space().used_percent
    set_marks(memory_kube, 1, 99)
    obj = reconcile(memory_kube, node, fake_clock)
    assert (obj["status"]["spaceLevel"], pressure(obj)[:2]) == ("warning", ("True", "AboveWarning"))
    assert space_events(memory_kube, obj) == [("Warning", "SpaceWarning")]

    set_marks(memory_kube, 1, math.floor(used))
    obj = reconcile(memory_kube, node, fake_clock)
    status, reason, message = pressure(obj)
    assert (status, reason, obj["status"]["spaceLevel"]) == ("True", "AboveCritical", "critical")
    assert obj["status"]["allocatable"] == 0  # the scheduler extender sends claims elsewhere
    assert "new volumes, clones and snapshots are refused" in message
    assert space_events(memory_kube, obj)[-1] == ("Warning", "SpaceCritical")
    with pytest.raises(OutOfCapacity, match="critical mark"):
        pool.create_volume("more", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    reconcile(memory_kube, node, fake_clock)  # no change of level: no new Event
    assert len(space_events(memory_kube, obj)) == 2

    set_marks(memory_kube, 80, 90)
    obj = reconcile(memory_kube, node, fake_clock)
    assert pressure(obj)[:2] == ("False", "BelowWarning")
    assert obj["status"]["allocatable"] > 0
    assert space_events(memory_kube, obj)[-1] == ("Normal", "SpaceRecovered")
    assert pool.create_volume("more", 64 * MiB, mode=VolumeMode.BLOCK, fs=None).name == "more"


def test_a_warning_mark_above_the_critical_one_is_an_invalid_spec(
        memory_kube: MemoryKube, node: Node, engine_home: Path, fake_clock: Any) -> None:
    obj = memory_kube.create({
        "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "odd"},
        "spec": {"node": NODE, "directory": str(engine_home / "pool-images"), "imageSize": "1Gi",
                 "thresholds": {"warningPercent": 95, "criticalPercent": 90}}})
    result = reconcile_pool(memory_kube, obj, node, NODE, fake_clock)
    assert result.outcome == "failed"
    got = memory_kube.get(STORAGE_POOL, "odd")
    ready = find(got["status"]["conditions"], "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "warning threshold" in ready["message"]
    with pytest.raises(InvalidArgument, match="criticalPercent"):
        memory_kube.create({
            "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
            "metadata": {"name": "worse"},
            "spec": {"node": NODE, "directory": str(engine_home / "x"), "imageSize": "1Gi",
                     "thresholds": {"warningPercent": 80, "criticalPercent": 101}}})
