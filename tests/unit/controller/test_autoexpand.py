"""Autoexpansion: the policy, the pure decision, and a node agent's pass on MemoryKube (a
stand-in engine node and measured usage; the real filesystem and the real API server are in
tests/integration/csi/test_autoexpand.py and tests/integration/kube/test_autoexpand_apiserver.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from statehold.controller import autoexpand
from statehold.controller.autoexpand import Decision, Pass, Policy, Usage, decide, policy_of
from statehold.engine.types import Capacity, Volume, VolumeMode
from statehold.errors import InvalidArgument, NotFound
from statehold.kube.kinds import PVC
from statehold.kube.memory import MemoryKube

MiB = 1024 * 1024
GiB = 1024 * MiB
T, S, M = autoexpand.THRESHOLD, autoexpand.STEP, autoexpand.MAX


# -- policy ------------------------------------------------------------------------------------------
def test_claim_annotations_override_the_class_key_by_key() -> None:
    got = policy_of({T: "80%", S: "20%", M: "10Gi"}, {S: "1Gi"})
    assert got == Policy(Decimal(80), None, None, GiB, 10 * GiB)


def test_a_quantity_threshold_means_free_bytes_and_the_step_defaults_to_20_percent() -> None:
    assert policy_of({}, {T: "2Gi", M: "5Gi"}) == Policy(None, 2 * GiB, Decimal(20), None, 5 * GiB)


def test_no_threshold_or_off_means_no_policy() -> None:
    assert policy_of({}, {}) is None
    assert policy_of({T: "80%", M: "1Gi"}, {T: "off"}) is None


@pytest.mark.parametrize("params", [{T: "80%"}, {T: "180%", M: "1Gi"}, {T: "0%", M: "1Gi"},
                                    {T: "lots", M: "1Gi"}, {T: "80%", S: "-5%", M: "1Gi"},
                                    {T: "80%", M: "big"}])
def test_a_malformed_policy_is_invalid(params: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        policy_of(params, {})


# -- decision ----------------------------------------------------------------------------------------
EIGHTY = Policy(Decimal(80), None, Decimal(20), None, 2 * GiB)


def usage(total: int, used: int) -> Usage:
    return Usage(total=total, used=used, available=total - used)


def test_under_the_threshold_nothing_happens() -> None:
    assert decide(EIGHTY, usage(GiB, 700 * MiB), GiB, GiB, 10 * GiB).outcome == "within"


def test_past_the_threshold_the_claim_grows_by_one_step() -> None:
    d = decide(EIGHTY, usage(GiB, 850 * MiB), GiB, GiB, 10 * GiB)
    assert (d.outcome, d.size, d.steps) == ("grow", GiB + 205 * MiB, 1)  # 20 % of 1 GiB, whole MiB


def test_a_volume_that_filled_far_past_gets_as_many_steps_as_it_needs() -> None:
    d = decide(EIGHTY, usage(GiB, GiB - 1 * MiB), GiB, GiB, 10 * GiB)  # 99.9 % used
    assert d.outcome == "grow" and d.steps == 2  # +20 %: 83 % used; +40 %: 71 %


def test_the_last_step_is_clipped_to_the_ceiling_and_then_it_stops() -> None:
    policy = Policy(Decimal(80), None, Decimal(50), None, GiB + 100 * MiB)
    d = decide(policy, usage(GiB, 900 * MiB), GiB, GiB, 10 * GiB)
    assert (d.outcome, d.size) == ("grow", GiB + 100 * MiB)
    at = decide(policy, usage(GiB + 100 * MiB, GiB), GiB + 100 * MiB, GiB + 100 * MiB, 10 * GiB)
    assert at.outcome == "ceiling"


def test_no_second_step_while_the_first_resize_is_in_flight() -> None:
    assert decide(EIGHTY, usage(GiB, 900 * MiB), GiB + 205 * MiB, GiB, 10 * GiB).outcome == "resizing"


def test_a_pool_without_room_stops_it() -> None:
    d = decide(EIGHTY, usage(GiB, 900 * MiB), GiB, GiB, 100 * MiB)
    assert d.outcome == "pool-full" and "pool has 100Mi left" in d.message


def test_a_free_bytes_threshold() -> None:
    policy = Policy(None, 200 * MiB, None, 512 * MiB, 4 * GiB)
    assert decide(policy, usage(GiB, 700 * MiB), GiB, GiB, 10 * GiB).outcome == "within"
    assert decide(policy, usage(GiB, 900 * MiB), GiB, GiB, 10 * GiB) == Decision(
        "grow", GiB + 512 * MiB, 1, decide(policy, usage(GiB, 900 * MiB), GiB, GiB, 10 * GiB).message)


# -- a pass on MemoryKube ------------------------------------------------------------------------------
@dataclass
class FakePool:
    name: str
    volumes: dict[str, Volume]
    allocatable: int = 10 * GiB

    def get_volume(self, name: str) -> Volume:
        if name not in self.volumes:
            raise NotFound(name)
        return self.volumes[name]

    def capacity(self) -> Capacity:
        return Capacity(total=0, used=0, provisioned=0, free=0, overprovision_ratio=10.0,
                        allocatable=self.allocatable)


@dataclass
class FakeNode:
    pools: dict[str, FakePool] = field(default_factory=dict)

    def pool(self, name: str) -> FakePool:
        if name not in self.pools:
            raise NotFound(name)
        return self.pools[name]


NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Cluster:
    def __init__(self, *, allow: bool = True, params: dict[str, str] | None = None,
                 annotations: dict[str, str] | None = None) -> None:
        self.kube = MemoryKube(now=lambda: NOW)
        vol = Volume(pool="p", name="pvc-1", size=GiB, mode=VolumeMode.FILESYSTEM, fs=None,
                     path=Path("/x"), created_at=1.0, mounts=("/mnt",))
        self.pool = FakePool("p", {"pvc-1": vol})
        self.node = FakeNode({"p": self.pool})
        self.used = 0
        self.kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                          "metadata": {"name": "fast"}, "provisioner": "csi.statehold.io",
                          "allowVolumeExpansion": allow,
                          "parameters": params if params is not None else {T: "80%", M: "1536Mi"}})
        self.kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
                          "spec": {"csi": {"driver": "csi.statehold.io", "volumeHandle": "p/pvc-1"},
                                   "capacity": {"storage": "1Gi"},
                                   "claimRef": {"name": "data", "namespace": "db"}}})
        self.kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          "metadata": {"name": "data", "namespace": "db", "annotations": annotations or {}},
                          "spec": {"storageClassName": "fast",
                                   "resources": {"requests": {"storage": "1Gi"}}}})
        self.kube.patch_status(PVC, "data", {"phase": "Bound", "capacity": {"storage": "1Gi"}}, "db")

    def measure(self, vol: Volume) -> Usage:
        total = self.capacity()
        return Usage(total=total, used=self.used, available=total - self.used)

    def capacity(self) -> int:
        return autoexpand._quantity(self.pvc(), "status", "capacity", "storage")

    def pvc(self) -> dict[str, Any]:
        return self.kube.get(PVC, "data", "db")

    def request(self) -> str:
        return str(self.pvc()["spec"]["resources"]["requests"]["storage"])

    def resized(self) -> None:
        """What the resizer and kubelet do: status.capacity reaches the request."""
        self.kube.patch_status(PVC, "data", {"capacity": {"storage": self.request()}}, "db")

    def run(self) -> autoexpand.Report:
        return Pass(self.kube, self.node, "n1", lambda: NOW, self.measure).run()["db/data"]  # type: ignore[arg-type]

    def events(self) -> list[str]:
        return [e["reason"] for e in self.kube.events_for(self.pvc())]

    def condition(self) -> tuple[str, str] | None:
        found = autoexpand.find(self.pvc()["status"].get("conditions"), autoexpand.CONDITION)
        return None if found is None else (found["status"], found["reason"])


def test_a_filling_claim_grows_step_by_step_up_to_its_ceiling() -> None:
    c = Cluster()
    c.used = 700 * MiB
    assert c.run().outcome == "within" and c.request() == "1Gi" and c.events() == []
    assert c.condition() is None  # never stopped: nothing written

    c.used = 900 * MiB
    assert c.run().outcome == "grown"
    assert c.request() == "1229Mi"  # +20 % of 1 GiB, whole MiB
    assert c.events() == ["AutoExpanded"] and c.condition() == ("False", "Expanding")
    assert c.run().outcome == "resizing" and c.request() == "1229Mi"  # no second step in flight

    c.resized()
    c.used = 1100 * MiB  # still filling: 89 %
    assert c.run().outcome == "grown" and c.request() == "1475Mi"
    c.resized()
    c.used = 1300 * MiB
    assert c.run().outcome == "grown" and c.request() == "1536Mi"  # clipped to the ceiling
    c.resized()
    c.used = 1500 * MiB
    stopped = c.run()
    assert stopped.outcome == "stopped" and c.condition() == ("True", "CeilingReached")
    assert c.request() == "1536Mi"
    assert c.run().outcome == "stopped"  # again: no second Warning
    assert c.events() == ["AutoExpanded"] * 3 + ["AutoExpandCeilingReached"]


def test_a_pool_without_room_sets_the_condition_once() -> None:
    c = Cluster()
    c.pool.allocatable = 10 * MiB
    c.used = 900 * MiB
    assert c.run().outcome == "stopped" and c.condition() == ("True", "PoolFull")
    c.run()
    assert c.events() == ["AutoExpandPoolFull"] and c.request() == "1Gi"
    c.pool.allocatable = 10 * GiB  # room again: it grows, and says so
    assert c.run().outcome == "grown" and c.condition() == ("False", "Expanding")


def test_a_class_without_expansion_or_a_bad_policy_stops_with_the_reason() -> None:
    c = Cluster(allow=False)
    c.used = 900 * MiB
    assert c.run().outcome == "stopped" and c.condition() == ("True", "ExpansionNotAllowed")
    bad = Cluster(annotations={M: "huge"})
    assert bad.run().outcome == "stopped" and bad.condition() == ("True", "InvalidPolicy")
    assert bad.events() == ["AutoExpandInvalidPolicy"]


def test_claims_without_a_policy_or_elsewhere_are_left_alone() -> None:
    c = Cluster(params={})
    c.used = 1000 * MiB
    assert c.run().outcome == "skipped" and c.request() == "1Gi"
    other = Cluster()
    other.node.pools.clear()  # the volume lives on another node
    assert Pass(other.kube, other.node, "n1", lambda: NOW, other.measure).run() == {}  # type: ignore[arg-type]
