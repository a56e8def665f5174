"""Reclaiming a released replicated PV (controller/reclaim.py, replication.md §8.1): the
policy's table, and the reconcile on MemoryKube with the fake agents (which refuse to
delete a copy staged on its node, as the real agent refuses one attached or mounted)."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.reclaim import FINALIZER
from statehold.controller.replication import replication_pass
from statehold.controller.replication_policy import Reclaim, plan_reclaim
from statehold.controller.schemas import validate_custom_resource
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME
from statehold.replication.points import node_label
from tests.unit.controller.replication_fakes import (
    HANDLE,
    FakeAgents,
    GiB,
    LoggingKube,
    node,
    pool,
    replicated_pv,
)

LABEL = node_label(HANDLE)
NODES = ("n1", "n2", "n3")


@pytest.mark.parametrize(("phase", "policy", "want"), [
    ("Released", "Delete", Reclaim(("n1", "n2"), ("n1", "n2"))),
    ("Released", "Retain", None),
    ("Released", "Recycle", None),
    ("Released", "", None),          # unset: the API server's default for a PV is Retain
    ("Bound", "Delete", None),
    ("Available", "Delete", None),
    ("Pending", "Delete", None),
    ("Failed", "Delete", None),
    ("", "Delete", None),
])
def test_only_a_released_pv_with_policy_delete_is_reclaimed(phase: str, policy: str,
                                                            want: Reclaim | None) -> None:
    assert plan_reclaim(phase=phase, policy=policy, primary="n1", copies=["n1", "n2"],
                        labelled=["n1", "n2"], nodes=NODES) == want


@pytest.mark.parametrize(("primary", "copies", "labelled", "nodes", "order", "unlabel"), [
    # the primary first, whatever its name sorts as
    ("n3", ["n1", "n3", "n2"], ["n3"], NODES, ("n3", "n1", "n2"), ("n3",)),
    # a labelled node is a holder even if status.copies forgot it
    ("n1", ["n1"], ["n1", "n2"], NODES, ("n1", "n2"), ("n1", "n2")),
    # a node without a Node object took its copy (and its labels) with it
    ("n1", ["n1", "gone"], ["n1", "gone"], NODES, ("n1",), ("n1",)),
    ("gone", ["gone", "n2"], ["n2"], NODES, ("n2",), ("n2",)),
    # a record without status yet: the PV's creating node is passed as the primary
    ("n2", [], [], NODES, ("n2",), ()),
    # everything gone already (a repeat after a crash): only the PV and record are left
    ("", [], [], NODES, (), ()),
])
def test_the_copies_go_primary_first(primary: str, copies: list[str], labelled: list[str],
                                     nodes: tuple[str, ...], order: tuple[str, ...],
                                     unlabel: tuple[str, ...]) -> None:
    assert plan_reclaim(phase="Released", policy="Delete", primary=primary, copies=copies,
                        labelled=labelled, nodes=nodes) == Reclaim(order, unlabel)


# -- the reconcile -------------------------------------------------------------------------

@pytest.fixture
def agents() -> FakeAgents:
    return FakeAgents()


@pytest.fixture
def kube(agents: FakeAgents, fake_clock: Any) -> LoggingKube:
    k = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    for i in (1, 2, 3):
        node(k, f"n{i}")
        pool(k, f"p{i}", f"n{i}", 100 * GiB * i)
    return k


def running(kube: LoggingKube, agents: FakeAgents, clock: Any, *, policy: str = "Delete",
            finalizers: list[str] | None = None) -> None:
    """A 2-copy volume made on n1 with its replica (n3, most free) acknowledged."""
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    kube.patch(PV, "pvc-1", {"metadata": {"finalizers": finalizers},
                             "spec": {"persistentVolumeReclaimPolicy": policy}})
    replication_pass(kube, agents, clock)
    agents.replicate()
    replication_pass(kube, agents, clock)
    assert sorted(n for (n, _v) in agents.copies) == ["n1", "n3"]
    assert labelled(kube) == ["n1", "n3"]


def release_pv(kube: LoggingKube) -> None:
    """What the PV controller does once the claim is deleted."""
    kube.patch_status(PV, "pvc-1", {"phase": "Released"})


def labelled(kube: LoggingKube) -> list[str]:
    return sorted(n["metadata"]["name"] for n in kube.list(NODE, label_selector={LABEL: "true"}))


def gone(kube: LoggingKube, kind: Any, name: str = "pvc-1") -> bool:
    try:
        kube.get(kind, name)
    except NotFound:
        return True
    return False


def test_a_released_pv_with_delete_leaves_nothing(kube: LoggingKube, agents: FakeAgents,
                                                  fake_clock: Any) -> None:
    running(kube, agents, fake_clock, finalizers=[FINALIZER])
    release_pv(kube)
    before = len(agents.log)
    out = replication_pass(kube, agents, fake_clock)
    assert out["pvc-1"].outcome == "done"
    assert agents.copies == {}
    # the primary's copy first (whole), then the replica; nothing created or promoted
    assert [c for c in agents.log[before:] if c[0] != "cas"] == [
        ("delete_copy", "n1"), ("delete_copy", "n3")]
    assert labelled(kube) == []
    assert gone(kube, PV) and gone(kube, REPLICATED_VOLUME)
    # a repeat (the ticker, the kopf handler) finds nothing to do
    assert replication_pass(kube, agents, fake_clock) == {}


def test_a_retain_pv_is_never_touched(kube: LoggingKube, agents: FakeAgents,
                                      fake_clock: Any) -> None:
    running(kube, agents, fake_clock, policy="Retain")
    release_pv(kube)
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("delete_copy") == []
    assert sorted(n for (n, _v) in agents.copies) == ["n1", "n3"]
    assert not gone(kube, PV) and not gone(kube, REPLICATED_VOLUME)
    assert labelled(kube) == ["n1", "n3"]


def test_a_bound_pv_with_delete_is_reconciled_as_usual(kube: LoggingKube, agents: FakeAgents,
                                                       fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch_status(PV, "pvc-1", {"phase": "Bound"})
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("delete_copy") == []
    assert not gone(kube, PV)


def test_a_staged_primary_waits_and_nothing_is_deleted_until_it_is_unstaged(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock, finalizers=[FINALIZER])
    agents.staged.add("n1")
    release_pv(kube)
    out = replication_pass(kube, agents, fake_clock)
    assert out["pvc-1"].outcome == "retry"
    assert sorted(n for (n, _v) in agents.copies) == ["n1", "n3"]  # the replica too
    pv = kube.get(PV, "pvc-1")
    assert pv["metadata"]["finalizers"] == [FINALIZER]
    assert not gone(kube, REPLICATED_VOLUME)
    assert "VolumeInUse" in [e["reason"] for e in kube.events_for(pv)]
    agents.staged.discard("n1")
    replication_pass(kube, agents, fake_clock)
    assert agents.copies == {} and gone(kube, PV) and gone(kube, REPLICATED_VOLUME)


def test_a_node_not_answering_keeps_the_pv_and_a_repeat_finishes(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.down.add("n3")
    release_pv(kube)
    replication_pass(kube, agents, fake_clock)
    # the primary's copy went; the replica's node did not answer: the PV stays for it
    assert sorted(n for (n, _v) in agents.copies) == ["n3"]
    assert labelled(kube) == ["n3"]
    assert not gone(kube, PV) and not gone(kube, REPLICATED_VOLUME)
    agents.down.discard("n3")
    replication_pass(kube, agents, fake_clock)
    assert agents.copies == {} and labelled(kube) == []
    assert gone(kube, PV) and gone(kube, REPLICATED_VOLUME)


def test_a_provisioner_that_deleted_the_primary_first_does_not_fight(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    """A controller-mode provisioner's DeleteVolume took the primary's copy already: the
    operator finds it gone (done) and deletes the rest."""
    running(kube, agents, fake_clock, finalizers=[FINALIZER])
    del agents.copies[("n1", HANDLE)]
    release_pv(kube)
    replication_pass(kube, agents, fake_clock)
    assert agents.copies == {} and gone(kube, PV) and gone(kube, REPLICATED_VOLUME)


def test_another_finalizer_keeps_the_record_until_the_pv_is_gone(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock, finalizers=[FINALIZER, "kubernetes.io/pv-protection"])
    release_pv(kube)
    replication_pass(kube, agents, fake_clock)
    pv = kube.get(PV, "pvc-1")
    assert pv["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]
    assert pv["metadata"].get("deletionTimestamp")
    assert agents.copies == {} and not gone(kube, REPLICATED_VOLUME)
    replication_pass(kube, agents, fake_clock)  # repeats: nothing new is created
    assert agents.copies == {} and agents.calls("create_copy") == [("create_copy", "n3", "p3")]
    kube.patch(PV, "pvc-1", {"metadata": {"finalizers": None}})  # the protection goes
    replication_pass(kube, agents, fake_clock)
    assert gone(kube, PV) and gone(kube, REPLICATED_VOLUME)


def test_a_refused_pv_delete_waits_with_an_event_and_the_pass_goes_on(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    running(kube, agents, fake_clock)
    release_pv(kube)
    real_delete = kube.delete

    def refuse_pv(kind: Any, name: str, namespace: str | None = None) -> None:
        if kind == PV:
            raise PermissionDenied("forbidden: delete core/persistentvolumes")
        real_delete(kind, name, namespace)

    monkeypatch.setattr(kube, "delete", refuse_pv)
    out = replication_pass(kube, agents, fake_clock)
    assert out["pvc-1"].outcome == "retry"
    assert agents.copies == {} and not gone(kube, PV) and not gone(kube, REPLICATED_VOLUME)
    assert "ReclaimFailed" in [e["reason"] for e in kube.events_for(kube.get(PV, "pvc-1"))]
    monkeypatch.setattr(kube, "delete", real_delete)
    replication_pass(kube, agents, fake_clock)
    assert gone(kube, PV) and gone(kube, REPLICATED_VOLUME)
