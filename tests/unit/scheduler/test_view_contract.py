"""One ClusterView contract suite, run against the in-memory view and the view over the
Kube facade (its in-memory MemoryKube)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from statehold.kube.kinds import PVC, STORAGE_POOL, kind_of
from statehold.kube.memory import MemoryKube
from statehold.kube.nodes import NodeHealth
from statehold.scheduler.core import GiB, PoolState
from statehold.scheduler.kubeview import KubeClusterView
from statehold.scheduler.objects import memory_view
from statehold.scheduler.view import (
    ClaimInfo,
    ClusterView,
    CopyInfo,
    ReplicaSetInfo,
    StorageClassInfo,
    VolumeInfo,
)
from tests.unit.scheduler import shapes

OBJECTS = [
    shapes.storage_class("statehold-local"),
    shapes.pvc("data", "10Gi", namespace="db"),
    shapes.pvc("bound", "5Gi", namespace="db", volume="pv-1"),
    shapes.pv("pv-1", ["n1", "n2"], primary="n2"),
    shapes.storage_pool("n1-a", "n1", 100 * GiB, 10 * GiB),
    shapes.storage_pool("n1-b", "n1", 50 * GiB, 0, ratio=1),
    shapes.storage_pool("n2-a", "n2", 100 * GiB, 0),
    shapes.replicated_pv("pv-r"),
    shapes.replicated_volume("pv-r", "n1", [("n1", "primary", "e3-9"), ("n2", "replica", "e3-8"),
                                            ("n3", "seeding", None)]),
    {"apiVersion": "v1", "kind": "Node", **shapes.node("n1")},
    {"apiVersion": "v1", "kind": "Node", **shapes.down_node("n2", out_of_service=True)},
]


def _memory() -> ClusterView:
    return memory_view(OBJECTS)


def loaded_kube() -> MemoryKube:
    """A MemoryKube holding OBJECTS, statuses written through the status subresource."""
    kube = MemoryKube()
    for obj in OBJECTS:
        created = kube.create({k: v for k, v in obj.items() if k != "status"})
        if "status" in obj:
            meta = created["metadata"]
            kube.patch_status(kind_of(obj), meta["name"], obj["status"], meta.get("namespace"))
    return kube


def _kube() -> ClusterView:
    return KubeClusterView(loaded_kube(), cache_seconds=0)


@pytest.fixture(params=[_memory, _kube], ids=["memory", "kube"])
def view(request: pytest.FixtureRequest) -> ClusterView:
    factory: Callable[[], ClusterView] = request.param
    return factory()


def test_claims(view: ClusterView) -> None:
    assert view.claim("db", "data") == ClaimInfo("db", "data", "statehold-local", 10 * GiB)
    assert view.claim("db", "bound") == ClaimInfo("db", "bound", "statehold-local", 5 * GiB,
                                                  volume_name="pv-1")
    assert view.claim("db", "nope") is None
    assert view.claim("other", "data") is None


def test_volumes(view: ClusterView) -> None:
    assert view.volume("pv-1") == VolumeInfo("pv-1", "csi.statehold.io", "pool-a/pv-1",
                                             frozenset({"n1", "n2"}), "n2")
    assert view.volume("nope") is None


def test_replicated_volumes(view: ClusterView) -> None:
    pv = view.volume("pv-r")
    assert pv is not None and pv.nodes == frozenset() and pv.copy_label is not None
    assert pv.copy_label.startswith("copy.statehold.io/") and len(pv.copy_label) == 34
    assert view.replica_set("pv-r") == ReplicaSetInfo("pv-r", "n1", 3, (
        CopyInfo("n1", "primary", "e3-9"), CopyInfo("n2", "replica", "e3-8"),
        CopyInfo("n3", "seeding", None)))
    assert view.replica_set("pv-1") is None


def test_node_health(view: ClusterView) -> None:
    assert view.node_health("n1") == NodeHealth("n1", zone="zone-a")
    assert view.node_health("n2") == NodeHealth("n2", ready=False, out_of_service=True,
                                                zone="zone-a")
    assert view.node_health("nope") is None


def test_storage_classes(view: ClusterView) -> None:
    sc = view.storage_class("statehold-local")
    assert sc == StorageClassInfo("statehold-local", "csi.statehold.io", True, {"type": "local"})
    assert view.storage_class("nope") is None


def test_pools_by_node(view: ClusterView) -> None:
    pools = view.pools()
    assert set(pools) == {"n1", "n2"}
    assert pools["n1"] == (PoolState("n1", "n1-a", 100 * GiB, 10 * GiB, 10.0),
                           PoolState("n1", "n1-b", 50 * GiB, 0, 1.0))
    assert "n3" not in pools


def test_kube_view_reuses_pool_list_for_cache_seconds_but_reads_claims_live() -> None:
    now = [0.0]
    kube = loaded_kube()
    view = KubeClusterView(kube, cache_seconds=2, clock=lambda: now[0])
    assert view.pools()["n2"][0].allocated == 0
    kube.patch_status(STORAGE_POOL, "n2-a", {"provisioned": 7 * GiB})
    kube.patch(PVC, "data", {"metadata": {"annotations": {
        "volume.kubernetes.io/selected-node": "n2"}}}, "db")
    assert view.pools()["n2"][0].allocated == 0  # cached
    assert view.claim("db", "data").selected_node == "n2"  # live
    now[0] = 2.0
    assert view.pools()["n2"][0].allocated == 7 * GiB


def test_claims_in_bulk(view: ClusterView) -> None:
    got = view.claims({("db", "data"), ("db", "bound"), ("db", "nope"), ("x", "data")})
    assert set(got) == {("db", "data"), ("db", "bound")}
    assert got[("db", "data")] == view.claim("db", "data")


def test_kube_view_reads_many_claims_with_one_list_per_namespace() -> None:
    kube = MemoryKube()
    for ns in ("a", "b"):
        for i in range(10):
            kube.create({k: v for k, v in shapes.pvc(f"c{i}", "1Gi", namespace=ns).items()
                         if k != "status"})
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name: str):
            calls.append(name)
            return getattr(kube, name)

    view = KubeClusterView(Counting(), cache_seconds=0)  # type: ignore[arg-type]
    keys = {(ns, f"c{i}") for ns in ("a", "b") for i in range(0, 10, 2)} | {("a", "zz")}
    got = view.claims(keys)
    assert set(got) == keys - {("a", "zz")}
    assert calls == ["list", "list"]
    calls.clear()
    assert set(view.claims({("a", "c1"), ("b", "c2")})) == {("a", "c1"), ("b", "c2")}
    assert calls == ["get", "get"]
