"""The whole path with real Kubernetes objects: the extender over HTTP reads the cluster
through the Kube facade (MemoryKube), kube-scheduler's writes (selected-node) and the
provisioner's (PVs, bound claims, pool status) happen there, and the ledger follows."""

from __future__ import annotations

import http.client
import json
import random
from typing import Any

from statehold.kube.kinds import PV, PVC, STORAGE_POOL, kind_of
from statehold.kube.memory import MemoryKube
from statehold.scheduler.core import GiB
from statehold.scheduler.kubeview import KubeClusterView
from statehold.scheduler.ledger import Ledger
from statehold.scheduler.server import ExtenderServer
from statehold.scheduler.service import Extender, ExtenderConfig
from tests.unit.scheduler import shapes

NODES = [f"n{i}" for i in range(4)]
PODS = 30  # 30 x 10 GiB asked, 4 x 55 GiB offered: 20 fit


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def load(kube: MemoryKube, objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        created = kube.create({k: v for k, v in obj.items() if k != "status"})
        if "status" in obj:
            meta = created["metadata"]
            kube.patch_status(kind_of(obj), meta["name"], obj["status"], meta.get("namespace"))


def post(conn: http.client.HTTPConnection, verb: str, obj: Any) -> Any:
    conn.request("POST", f"/{verb}", json.dumps(obj), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    return json.loads(r.read())


def test_burst_against_the_kube_facade_never_overcommits_and_ledger_drains() -> None:
    kube = MemoryKube()
    load(kube, [shapes.storage_class("statehold-local")]
         + [shapes.storage_pool(f"{n}-a", n, 55 * GiB, 0, ratio=1) for n in NODES]
         + [shapes.pvc(f"data-db-{i}", "10Gi", namespace="apps") for i in range(PODS)])
    clock = Clock()
    ext = Extender(KubeClusterView(kube, cache_seconds=0),
                   ledger=Ledger(ttl=120, settle=15, clock=clock),
                   config=ExtenderConfig(sweep_interval=0), clock=clock)
    server = ExtenderServer(("127.0.0.1", 0), ext)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    rng = random.Random(3)
    placed: dict[int, str] = {}
    try:
        for i in range(PODS):
            pod = shapes.pod(f"db-{i}", [f"data-db-{i}"], namespace="apps")
            out = post(conn, "filter", shapes.args(pod, NODES))
            assert out["Error"] == ""
            passed = out["NodeNames"]
            if not passed:
                assert all("does not fit" in r for r in out["FailedAndUnresolvableNodes"].values())
                continue
            if len(passed) > 1:
                post(conn, "prioritize", shapes.args(pod, passed))
            # Other plugins outweighed us: the scheduler takes any node that passed, and
            # its VolumeBinding plugin writes its choice on the claim.
            node = rng.choice(passed)
            placed[i] = node
            kube.patch(PVC, f"data-db-{i}", {"metadata": {"annotations": {
                "volume.kubernetes.io/selected-node": node}}}, "apps")
        per_node = {n: sum(10 for v in placed.values() if v == n) for n in NODES}
        assert len(placed) == 20 and max(per_node.values()) <= 55, per_node

        # The provisioner catches up: PVs on the chosen nodes, claims bound, pools report.
        for i, node in placed.items():
            load(kube, [shapes.pv(f"pv-db-{i}", [node])])
            kube.patch(PVC, f"data-db-{i}", {"spec": {"volumeName": f"pv-db-{i}"}}, "apps")
        for n in NODES:
            kube.patch_status(STORAGE_POOL, f"{n}-a", {"provisioned": per_node[n] * GiB})
        post(conn, "filter", shapes.args(shapes.pod("web-0", []), NODES))  # a sweep
        assert ext.ledger.total() == 20 * 10 * GiB  # settling: still counted
        clock.now += 15
        post(conn, "filter", shapes.args(shapes.pod("web-1", []), NODES))
        assert ext.ledger.all() == ()

        # The bound pods now go only where their data is, primary first.
        i, node = next(iter(placed.items()))
        pod = shapes.pod(f"db-{i}", [f"data-db-{i}"], namespace="apps")
        assert post(conn, "filter", shapes.args(pod, NODES))["NodeNames"] == [node]
        scores = post(conn, "prioritize", shapes.args(pod, NODES))
        assert {s["Host"]: s["Score"] for s in scores}[node] == 10
        assert kube.get(PV, f"pv-db-{i}")["spec"]["csi"]["driver"] == shapes.DRIVER
    finally:
        conn.close()
        server.stop()
