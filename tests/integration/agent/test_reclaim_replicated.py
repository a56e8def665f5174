"""A replicated PV released with ``reclaimPolicy: Delete`` is reclaimed by the operator
(issue 12, controller/reclaim.py), with the real parts of ``test_failover_e2e``: three
netns nodes, their agents over mTLS, the operator's reconciler, a CSI driver per node.

external-provisioner in node-deployment mode never calls DeleteVolume for a replicated
PV (its affinity names the per-volume copy label, which no node's topology carries): the
operator deletes every copy itself, the primary's whole, then the PV and the record.
Checked on disk and in each pool's metadata, on every node.
"""

from __future__ import annotations

from typing import Any

from statehold.controller.reclaim import FINALIZER
from statehold.errors import NotFound
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME
from statehold.replication.points import node_label
from tests.integration.agent import test_failover_e2e as e2e
from tests.integration.agent.harness import scribble
from tests.integration.agent.test_delete_replicated import everything_of
from tests.integration.agent.test_failover_e2e import Volume, World, replicated

world = e2e.world
"""The fixture of ``test_failover_e2e`` (agents, operator's reconciler, CSI drivers)."""

pytestmark = e2e.pytestmark


def released(w: World, v: Volume, policy: str) -> None:
    """What a dynamically provisioned PV looks like once its claim is deleted."""
    w.kube.patch(PV, v.pv, {"metadata": {"finalizers": [FINALIZER]},
                            "spec": {"persistentVolumeReclaimPolicy": policy}})
    w.kube.patch_status(PV, v.pv, {"phase": "Released"})


def exists(w: World, kind: Any, name: str) -> bool:
    try:
        w.kube.get(kind, name)
    except NotFound:
        return False
    return True


def labelled(w: World, v: Volume) -> list[str]:
    key = node_label(v.handle)
    return sorted(n["metadata"]["name"] for n in w.kube.list(NODE)
                  if key in (n["metadata"].get("labels") or {}))


def core_files(w: World, v: Volume) -> dict[str, list[str]]:
    """Per node, the volume file and replication state of ``v`` (point snapshots come and
    go with the replication loop; these stay while the copy does)."""
    return {n: sorted(p for p in paths if p.endswith((".img", ".json"))
                      and "/snapshots/" not in p)
            for n, paths in everything_of(w, v).items()}


def two_copies(w: World, name: str, seed: int) -> Volume:
    n1, n2, _n3 = w.cluster.nodes
    v = w.create_volume(n1, name, replicas=2)
    scribble(w.copy_file(n1, v), 8, seed=seed)
    w.converge(lambda: replicated(w, v, n2) and labelled(w, v) == ["n1", "n2"],
               "a replica holding the primary's bytes, both labelled")
    return v


def test_a_staged_copy_waits_then_nothing_is_left_anywhere(world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    v = two_copies(w, "pv-reclaim", seed=11)
    held = everything_of(w, v)
    assert held[n1.name] and held[n2.name] and not held[n3.name]
    assert any("/snapshots/" in p for p in held[n1.name] + held[n2.name])  # points to leak

    w.stage(n1, v)  # the pod's kubelet has not unstaged it yet
    released(w, v, "Delete")
    before = core_files(w, v)
    for _ in range(3):
        w.reconcile()
    assert core_files(w, v) == before  # no copy deleted, the replica neither
    assert exists(w, PV, v.pv) and exists(w, REPLICATED_VOLUME, v.pv)
    assert w.kube.get(PV, v.pv)["metadata"]["finalizers"] == [FINALIZER]
    assert "VolumeInUse" in [e["reason"] for e in w.kube.events_for(w.kube.get(PV, v.pv))]

    w.unstage(n1, v)
    w.converge(lambda: not exists(w, PV, v.pv), "the PV reclaimed")
    assert everything_of(w, v) == {n.name: [] for n in w.cluster.nodes}
    assert not exists(w, REPLICATED_VOLUME, v.pv)
    assert labelled(w, v) == []
    w.reconcile()  # a repeat finds nothing to do, and makes nothing
    assert everything_of(w, v) == {n.name: [] for n in w.cluster.nodes}


def test_a_retained_pv_keeps_every_copy(world: World) -> None:
    w = world
    n1, n2, _n3 = w.cluster.nodes
    v = two_copies(w, "pv-retain", seed=12)
    released(w, v, "Retain")
    before = core_files(w, v)
    assert before[n1.name] and before[n2.name]
    for _ in range(3):
        w.reconcile()
    assert core_files(w, v) == before
    assert exists(w, PV, v.pv) and exists(w, REPLICATED_VOLUME, v.pv)
    assert labelled(w, v) == ["n1", "n2"]
    assert replicated(w, v, n2)
