"""A replicated PV reclaimed against the session's real kube-apiserver and
kube-controller-manager (issue 12, controller/reclaim.py).

The claim's life is Kubernetes' own: a PVC bound to the PV by the real PV controller, the
PVC deleted, the PV turned ``Released`` by it; with ``reclaimPolicy: Delete`` and the
``pv.kubernetes.io/provisioned-by`` annotation external-provisioner writes, the PV
controller leaves the deletion to the external provisioner, which in node-deployment mode
never comes for a replicated PV. The operator's reconciler (``replication_pass`` in the
test process, reaching the two netns nodes' agents over mTLS) deletes both copies whole,
removes the provisioner's finalizer, deletes the PV (the real pv-protection controller
lets it go) and retires the record. The world is ``test_replicated_postgres``'s.
"""

from __future__ import annotations

import contextlib

import pytest

from statehold.controller.reclaim import FINALIZER
from statehold.errors import NotFound
from statehold.kube.kinds import NODE, PV, PVC, REPLICATED_VOLUME, Kind
from statehold.replication.points import node_label
from tests.e2e.replicated_pg import MiB, Volume, World
from tests.e2e.test_replicated_postgres import world  # noqa: F401  (the fixture)
from tests.fixtures.netns import NetNode, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def gone(w: World, kind: Kind, name: str, namespace: str | None = None) -> bool:
    try:
        w.kube.get(kind, name, namespace)
    except NotFound:
        return True
    return False


def on_disk(w: World, node: NetNode, v: Volume) -> list[str]:
    """The copy's volume file, replication state and point snapshots on ``node``."""
    pool = node.home / "pools" / node.pool
    found = [p for p in (pool / "volumes" / f"{v.name}.img",
                         pool / ".statehold" / "replication" / f"{v.name}.json")
             if p.exists()]
    found += sorted((pool / "snapshots").glob(f"*{v.name}*"))
    return [str(p) for p in found]


def test_a_released_replicated_pv_is_reclaimed_on_a_real_api_server(world: World) -> None:  # noqa: F811
    w = world
    a, b = w.cluster.nodes
    v = w.create_volume(a, f"pv-reclaim-{a.name}", size=256 * MiB, replicas=2, rpo="5s")

    def replica_on_b() -> bool:
        r = w.report(b, v)
        return r is not None and r.role == "replica" and r.point is not None

    w.converge(replica_on_b, "a seeded replica on B")
    assert on_disk(w, a, v) and on_disk(w, b, v)
    ns = "default"  # the world's namespace is its own; a claim may live anywhere
    claim = f"data-{v.pv}"[:60]
    # what a dynamically provisioned PV looks like: Delete, provisioned by us, finalizer
    w.kube.patch(PV, v.pv, {
        "metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": "csi.statehold.io"},
                     "finalizers": [FINALIZER]},
        "spec": {"persistentVolumeReclaimPolicy": "Delete",
                 "claimRef": {"namespace": ns, "name": claim}}})
    w.kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": claim, "namespace": ns},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                            "volumeName": v.pv, "resources": {"requests": {"storage": "256Mi"}}}})
    try:
        wait_for(lambda: (w.kube.get(PV, v.pv).get("status") or {}).get("phase") == "Bound",
                 120, "the PV controller binds the claim")
        w.reconcile()  # a bound PV is the operator's to keep replicated, not to delete
        assert on_disk(w, a, v) and on_disk(w, b, v)
        w.kube.delete(PVC, claim, ns)
        wait_for(lambda: gone(w, PV, v.pv) or (w.kube.get(PV, v.pv).get("status") or {})
                 .get("phase") == "Released", 120, "the PV released")
        w.converge(lambda: gone(w, PV, v.pv), "the operator reclaims the PV", timeout=180)
        w.converge(lambda: gone(w, REPLICATED_VOLUME, v.pv), "the record retired", timeout=60)
        assert on_disk(w, a, v) == [] and on_disk(w, b, v) == []
        key = node_label(v.handle)
        assert not any(key in (n["metadata"].get("labels") or {}) for n in w.kube.list(NODE)
                       if n["metadata"]["name"] in (a.name, b.name))
    finally:
        with contextlib.suppress(NotFound):
            w.kube.delete(PVC, claim, ns)
