"""The extender and replicated volumes (replication.md §8.3): the copies that can serve are
admitted, the primary's node ranked first; with the primary's node down, the copy holders
by newest acknowledged point."""

from __future__ import annotations

import json
from typing import Any

from statehold.kube.nodes import NodeHealth
from statehold.scheduler.claims import ClaimPolicy, replicated, resolve
from statehold.scheduler.core import (
    MAX_SCORE,
    BoundVolume,
    ClaimKey,
    PodVolumes,
    best_verdict,
    filter_nodes,
    preferred_scores,
    score_nodes,
)
from statehold.scheduler.objects import memory_view, volume_info
from statehold.scheduler.service import Extender
from statehold.scheduler.view import CopyInfo, MemoryClusterView, ReplicaSetInfo
from statehold.scheduler.wire import decode_pod
from tests.unit.scheduler import shapes

A = ClaimKey("db", "data")
COPIES = (CopyInfo("n1", "primary", "e3-9"), CopyInfo("n2", "replica", "e3-7"),
          CopyInfo("n3", "replica", "e3-8"), CopyInfo("n4", "seeding", None),
          CopyInfo("n5", "stale", "e2-40"))
RS = ReplicaSetInfo("pv-r", "n1", 3, COPIES)
NODES = ["n1", "n2", "n3", "n4", "n5", "n6"]


def test_the_copy_label_affinity_marks_a_replicated_pv() -> None:
    for operator in ("In", "Exists"):
        info = volume_info(shapes.replicated_pv("pv-r", operator=operator))
        assert info.copy_label is not None and info.nodes == frozenset()
    assert volume_info(shapes.pv("pv-1", ["n1"])).copy_label is None


def test_a_healthy_primary_admits_the_serving_copies_and_ranks_first() -> None:
    vol = replicated(A, "pv-r", RS, NodeHealth("n1"))
    assert vol == BoundVolume(A, "pv-r", frozenset({"n1", "n2", "n3"}), "n1")
    pod = PodVolumes("db/pg-0", bound=(vol,))
    out = filter_nodes(pod, NODES, {}, {})
    assert out.passed == ("n1", "n2", "n3")         # never a seeding or stale copy
    assert {s.node: s.score for s in score_nodes(pod, ["n1", "n2", "n3"], {}, {})}["n1"] == MAX_SCORE


def test_an_unavailable_primary_ranks_the_copies_by_newest_point() -> None:
    for health in (NodeHealth("n1", ready=False), NodeHealth("n1", ready=False,
                                                             out_of_service=True), None):
        vol = replicated(A, "pv-r", RS, health)
        assert vol == BoundVolume(A, "pv-r", frozenset({"n2", "n3"}), None, ("n3", "n2"))
    pod = PodVolumes("db/pg-0", bound=(vol,))
    out = filter_nodes(pod, NODES, {}, {})
    assert out.passed == ("n2", "n3") and "n1" in out.unresolvable
    scores = {s.node: s.score for s in score_nodes(pod, ["n2", "n3"], {}, {})}
    assert scores == {"n3": MAX_SCORE, "n2": MAX_SCORE - 1}
    assert preferred_scores(pod) == {"n3": 10, "n2": 9}
    assert best_verdict(pod, out.verdicts, out.passed) == "n3"


def test_a_replicated_pv_without_a_record_is_left_to_its_node_affinity() -> None:
    view = memory_view([shapes.pvc("data", "10Gi", namespace="db", volume="pv-r"),
                        shapes.replicated_pv("pv-r")])
    pod = decode_pod(shapes.pod("pg-0", ["data"], namespace="db"))
    assert resolve(pod, view, ClaimPolicy()) == PodVolumes("db/pg-0")


def _extender(*objs: dict[str, Any]) -> Extender:
    base = [shapes.storage_class("statehold-replicated"),
            shapes.pvc("data", "10Gi", namespace="db", volume="pv-r", sc="statehold-replicated"),
            shapes.replicated_pv("pv-r"),
            shapes.replicated_volume("pv-r", "n1", [("n1", "primary", "e3-9"),
                                                    ("n2", "replica", "e3-7"),
                                                    ("n3", "replica", "e3-8")])]
    view: MemoryClusterView = memory_view([*base, *objs])
    return Extender(view)


def _node(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", **obj}


def _ask(ext: Extender, nodes: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
    pod = shapes.pod("pg-0", ["data"], namespace="db")
    args = json.dumps(shapes.args(pod, nodes)).encode()
    _, filtered = ext.filter(args)
    _, scores = ext.prioritize(args)
    return filtered, {s["Host"]: s["Score"] for s in scores}


def test_extender_prefers_the_primary_while_its_node_is_up() -> None:
    ext = _extender(_node(shapes.node("n1")))
    filtered, scores = _ask(ext, ["n1", "n2", "n3", "n4"])
    assert filtered["NodeNames"] == ["n1", "n2", "n3"]
    assert "n4" in filtered["FailedAndUnresolvableNodes"]
    assert max(scores, key=lambda n: scores[n]) == "n1" and scores["n1"] == MAX_SCORE


def test_extender_admits_the_newest_copy_first_when_the_primary_is_out_of_service() -> None:
    ext = _extender(_node(shapes.down_node("n1", out_of_service=True)))
    filtered, scores = _ask(ext, ["n2", "n3", "n4"])
    assert filtered["NodeNames"] == ["n2", "n3"]
    assert scores == {"n2": MAX_SCORE - 1, "n3": MAX_SCORE, "n4": 0}
