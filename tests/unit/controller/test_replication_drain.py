"""Moves started by a cordon or a drain of the primary's node, and the export of a retired
pool (docs/design/replication.md §9.5, §9.7): the decision tables, then the reconciler on
MemoryKube with the fake agents."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.replication import reconcile_volume, replication_pass
from statehold.controller.replication_policy import (
    CancelMove,
    CopyInfo,
    CordonMove,
    Record,
    Refuse,
    plan_cordon,
)
from statehold.controller.replication_records import MOVE_ON_CORDON, moves_on_cordon
from statehold.controller.retirement import pool_condition, single_copy_volumes
from statehold.controller.schemas import validate_custom_resource
from statehold.errors import Unavailable
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME, STORAGE_POOL
from statehold.kube.nodes import NodeHealth
from tests.unit.controller.replication_fakes import (
    HANDLE,
    FakeAgents,
    GiB,
    LoggingKube,
    node,
    pool,
    replicated_pv,
)

P = CopyInfo("n1", "primary", "e3-9", epoch=3)
R2 = CopyInfo("n2", "replica", "e3-7", epoch=3)
R3 = CopyInfo("n3", "replica", "e3-8", epoch=3)
SEEDING = CopyInfo("n3", "seeding", None)
GONE = CopyInfo("n3", "replica", "e3-8", epoch=3, reachable=False)
UP = NodeHealth("n")
CORDONED = NodeHealth("n", unschedulable=True)
DOWN_CORDONED = NodeHealth("n", ready=False, unschedulable=True)


def rec(*copies: CopyInfo, **kw: Any) -> Record:
    return Record("p1/pvc-1", 3, "n1", (P, *copies), replicas=3, **kw)


def health(n1: NodeHealth = UP, n2: NodeHealth = UP, n3: NodeHealth = UP) -> dict[str, NodeHealth]:
    return {"n1": n1, "n2": n2, "n3": n3}


@pytest.mark.parametrize(("record", "nodes", "enabled", "want"), [
    # the primary's node schedulable, or not ready (failover's, not a move's): nothing
    (rec(R2, R3), health(), True, None),
    (rec(R2, R3), health(n1=DOWN_CORDONED), True, None),
    (rec(R2, R3), {"n2": UP, "n3": UP}, True, None),
    # cordoned: the newest acknowledged replica on a schedulable, Ready node
    (rec(R2, R3), health(n1=CORDONED), True, CordonMove("n3")),
    (rec(R2, R3), health(n1=CORDONED, n3=CORDONED), True, CordonMove("n2")),
    (rec(R2, R3), health(n1=CORDONED, n3=NodeHealth("n3", ready=False)), True, CordonMove("n2")),
    (rec(R2, R3), health(n1=CORDONED, n3=NodeHealth("n3", out_of_service=True)), True,
     CordonMove("n2")),
    (rec(R2, SEEDING), health(n1=CORDONED), True, CordonMove("n2")),
    (rec(R2, GONE), health(n1=CORDONED), True, CordonMove("n2")),
    (rec(R2, R3), {"n1": CORDONED, "n2": UP}, True, CordonMove("n2")),  # n3's Node is gone
    (rec(CopyInfo("n2", "stale", "e2-4"), SEEDING), health(n1=CORDONED), True, "NoMoveTarget"),
    (rec(R2, R3), health(CORDONED, CORDONED, CORDONED), True, "NoMoveTarget"),
    # turned off: nothing starts
    (rec(R2, R3), health(n1=CORDONED), False, None),
    # an explicit request goes first
    (rec(R2, R3, move="n2"), health(n1=CORDONED), True, None),
    (rec(R2, R3, promote="n2"), health(n1=CORDONED), True, None),
    (rec(R2, R3, move="n2", moving="n2"), health(), True, None),
    # a move under way without a request: a cordon's
    (rec(R2, R3, moving="n2"), health(n1=CORDONED), True, CordonMove("n2")),
    (rec(R2, R3, moving="n2"), health(n1=CORDONED, n2=CORDONED), True, CordonMove("n2")),
    (rec(R2, R3, moving="n2"), health(), True, CancelMove("n2", "node n1 is schedulable again")),
    (rec(R2, R3, moving="n2"), health(n1=CORDONED), False,
     CancelMove("n2", "moves on cordon are turned off")),
])
def test_plan_cordon_table(record: Record, nodes: dict[str, NodeHealth], enabled: bool,
                           want: object) -> None:
    got = plan_cordon(record, nodes, enabled=enabled)
    if isinstance(want, str):
        assert isinstance(got, Refuse) and got.reason == want
    else:
        assert got == want


@pytest.mark.parametrize(("annotations", "want"), [
    (None, True), ({}, True), ({MOVE_ON_CORDON: "true"}, True), ({MOVE_ON_CORDON: "false"}, False),
    ({MOVE_ON_CORDON: " False "}, False), ({MOVE_ON_CORDON: "0"}, False),
    ({"other": "false"}, True)])
def test_a_volume_opts_out_by_annotation(annotations: dict[str, str] | None, want: bool) -> None:
    meta: dict[str, Any] = {"name": "pvc-1"}
    if annotations is not None:
        meta["annotations"] = annotations
    assert moves_on_cordon({"metadata": meta}) is want


# -- retirement table --------------------------------------------------------------------------

def single_pv(name: str, handle: str, replicas: int = 1, driver: str = "csi.statehold.io") -> Any:
    attrs = {"statehold.io/replicas": str(replicas)} if replicas > 1 else {}
    return {"metadata": {"name": name}, "spec": {"csi": {
        "driver": driver, "volumeHandle": handle, "volumeAttributes": attrs}}}


def test_single_copy_volumes_are_the_pools_one_copy_pvs_of_our_driver() -> None:
    pvs = [single_pv("a", "p3/a"), single_pv("b", "p3/b", replicas=2), single_pv("c", "p2/c"),
           single_pv("d", "p3/d", driver="other.csi"), single_pv("e", "p3/e")]
    assert single_copy_volumes(pvs, "p3") == ["a", "e"]


@pytest.mark.parametrize(("pvs", "previous", "want"), [
    ([], None, "Retired"),
    ([], "InProgress", "Retired"),
    ([], "Retired", None),                    # due: the agent is asked
    ([], "ExportFailed", None),
    ([], "ExportBlocked", None),
    ([], "Exported", "Exported"),             # final: the agent is not asked again
    ([single_pv("a", "p3/a")], "Retired", "ExportBlocked"),
    ([single_pv("a", "p3/a")], "Exported", "ExportBlocked"),
    ([single_pv("b", "p3/b", replicas=2)], "Retired", None),
])
def test_pool_condition_table(pvs: list[Any], previous: str | None, want: str | None) -> None:
    got = pool_condition("n3", "p3", {}, pvs, previous)
    assert (got[2] if got is not None else None) == want
    if want == "ExportBlocked":
        assert got is not None and "single-copy" in got[3] and "a" in got[3]


# -- the reconciler ----------------------------------------------------------------------------

@pytest.fixture
def agents() -> FakeAgents:
    return FakeAgents()


@pytest.fixture
def kube(agents: FakeAgents, fake_clock: Any) -> LoggingKube:
    k = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    for i, free in ((1, 100), (2, 300), (3, 200)):
        node(k, f"n{i}")
        pool(k, f"p{i}", f"n{i}", free * GiB)
        agents.pools[f"n{i}"] = {f"p{i}"}
    return k


def rv(kube: LoggingKube) -> dict[str, Any]:
    return kube.get(REPLICATED_VOLUME, "pvc-1")


def reasons(kube: LoggingKube) -> list[str]:
    return [e["reason"] for e in kube.events_for(rv(kube))]


def cordon(kube: LoggingKube, name: str, on: bool = True) -> None:
    kube.patch(NODE, name, {"spec": {"unschedulable": True if on else None}})


def running(kube: LoggingKube, agents: FakeAgents, fake_clock: Any, replicas: int = 2) -> None:
    """A volume made on n1 with its replicas acknowledged (n2 first: most free)."""
    agents.made_by_create_volume("n1")
    replicated_pv(kube, replicas=replicas)
    replication_pass(kube, agents, fake_clock)
    agents.replicate()
    replication_pass(kube, agents, fake_clock)


def test_a_cordon_moves_the_primary_once_the_pod_is_gone(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.staged.add("n1")
    cordon(kube, "n1")
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert st["moving"] == {"to": "n2", "epoch": 1} and st["primary"] == "n1"
    assert "move" not in rv(kube)["spec"]  # no request written: the cordon is the reason
    assert "MoveStarted" in reasons(kube)
    replication_pass(kube, agents, fake_clock)  # the pod still runs: the move waits
    assert (rv(kube)["status"]["epoch"], rv(kube)["status"]["primary"]) == (1, "n1")
    agents.staged.discard("n1")  # drained: the pod is gone, the volume unstaged
    start = len(agents.log)
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert (st["epoch"], st["primary"]) == (2, "n2") and "moving" not in st
    order = [c for c in agents.log[start:] if c[0] in ("final_sync", "cas", "promote", "demote")]
    assert order[:4] == [("final_sync", "n1", "n2"), ("cas", 2, "n2", None),
                         ("promote", "n2", 2), ("demote", "n1", 2)]
    assert agents.copies[("n2", HANDLE)].point == agents.copies[("n1", HANDLE)].point
    assert agents.writable(HANDLE, 2) == ["n2"] and "Moved" in reasons(kube)
    replication_pass(kube, agents, fake_clock)  # n1 still cordoned, but no longer primary
    assert rv(kube)["status"]["primary"] == "n2" and "moving" not in rv(kube)["status"]


def test_an_uncordon_before_the_unstage_cancels_the_move(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.staged.add("n1")
    cordon(kube, "n1")
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["status"]["moving"]["to"] == "n2"
    cordon(kube, "n1", on=False)
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert (st["epoch"], st["primary"]) == (1, "n1") and "moving" not in st
    assert "MoveCancelled" in reasons(kube)
    cond = next(c for c in st["conditions"] if c["type"] == "Moving")
    assert cond["reason"] == "MoveCancelled"
    assert agents.writable(HANDLE, 1) == ["n1"] and agents.calls("promote")[-1] == ("promote", "n1", 1)


def test_an_uncordon_after_the_unstage_finishes_the_move(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.staged.add("n1")
    cordon(kube, "n1")
    replication_pass(kube, agents, fake_clock)
    agents.staged.discard("n1")  # evicted: the pod starts elsewhere, the move must finish
    cordon(kube, "n1", on=False)
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert (st["epoch"], st["primary"]) == (2, "n2") and "moving" not in st


def test_a_cordon_moves_nothing_when_turned_off(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    cordon(kube, "n1")
    replication_pass(kube, agents, fake_clock, move_on_cordon=False)
    assert "moving" not in rv(kube)["status"]
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"metadata": {"annotations": {MOVE_ON_CORDON: "false"}}})
    replication_pass(kube, agents, fake_clock)
    assert "moving" not in rv(kube)["status"] and agents.calls("final_sync") == []


def test_turning_it_off_during_a_move_cancels_it(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.staged.add("n1")
    cordon(kube, "n1")
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert rv(kube)["status"]["moving"]["to"] == "n2"
    reconcile_volume(kube, agents, rv(kube), fake_clock, move_on_cordon=False)
    assert "moving" not in rv(kube)["status"] and rv(kube)["status"]["primary"] == "n1"


def test_a_cordon_without_a_target_is_a_condition_and_one_event(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    cordon(kube, "n1")
    cordon(kube, "n2")
    cordon(kube, "n3")
    replication_pass(kube, agents, fake_clock)
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert "moving" not in st and st["primary"] == "n1"
    cond = next(c for c in st["conditions"] if c["type"] == "Moving")
    assert (cond["status"], cond["reason"]) == ("False", "NoMoveTarget")
    assert reasons(kube).count("NoMoveTarget") == 1
    cordon(kube, "n2", on=False)  # a target appears; no pod staged: the move is one pass
    replication_pass(kube, agents, fake_clock)
    assert (rv(kube)["status"]["epoch"], rv(kube)["status"]["primary"]) == (2, "n2")


def test_a_failed_final_sync_abandons_a_cordon_move(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    cordon(kube, "n1")
    agents.sync_error = Unavailable("link down")
    replication_pass(kube, agents, fake_clock)
    st = rv(kube)["status"]
    assert (st["epoch"], st["primary"]) == (1, "n1") and "moving" not in st
    assert "MoveAbandoned" in reasons(kube)


# -- retirement and export -----------------------------------------------------------------

def retiring(kube: LoggingKube, name: str) -> dict[str, Any]:
    return next(c for c in kube.get(STORAGE_POOL, name)["status"]["conditions"]
                if c["type"] == "Retiring")


def pool_events(kube: LoggingKube, name: str) -> list[str]:
    return [e["reason"] for e in kube.events_for(kube.get(STORAGE_POOL, name))]


def test_a_retired_pool_is_exported_once_empty_and_only_once(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(STORAGE_POOL, "p2", {"spec": {"decommission": True}})
    replication_pass(kube, agents, fake_clock)
    assert retiring(kube, "p2")["reason"] == "InProgress" and agents.calls("export_pool") == []
    agents.replicate()
    replication_pass(kube, agents, fake_clock)  # n2's copy released
    replication_pass(kube, agents, fake_clock)
    assert retiring(kube, "p2")["reason"] == "Retired" and agents.calls("export_pool") == []
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("export_pool") == [("export_pool", "n2", "p2")]
    assert (retiring(kube, "p2")["status"], retiring(kube, "p2")["reason"]) == ("True", "Exported")
    assert "p2" not in agents.pools["n2"] and "Exported" in pool_events(kube, "p2")
    replication_pass(kube, agents, fake_clock)
    assert len(agents.calls("export_pool")) == 1


def test_a_single_copy_volume_blocks_the_export(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "solo"},
                 "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                          "csi": {"driver": "csi.statehold.io", "volumeHandle": "p3/solo"}}})
    kube.patch(STORAGE_POOL, "p3", {"spec": {"decommission": True}})
    for _ in range(3):
        replication_pass(kube, agents, fake_clock)
    cond = retiring(kube, "p3")
    assert cond["reason"] == "ExportBlocked" and "solo" in cond["message"]
    assert "single-copy" in cond["message"] and agents.calls("export_pool") == []
    kube.delete(PV, "solo")
    replication_pass(kube, agents, fake_clock)
    assert retiring(kube, "p3")["reason"] == "Exported"


def test_an_export_the_agent_refuses_is_retried(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    kube.patch(STORAGE_POOL, "p3", {"spec": {"decommission": True}})
    agents.busy_pools.add("p3")
    replication_pass(kube, agents, fake_clock)
    replication_pass(kube, agents, fake_clock)
    cond = retiring(kube, "p3")
    assert cond["reason"] == "ExportFailed" and "busy" in cond["message"]
    agents.busy_pools.clear()
    replication_pass(kube, agents, fake_clock)
    assert retiring(kube, "p3")["reason"] == "Exported"
    assert pool_events(kube, "p3").count("ExportFailed") == 1


def test_the_node_operator_leaves_an_exported_pool_exported(
        kube: LoggingKube, tmp_path: Any, fake_clock: Any) -> None:
    from statehold.controller.pools import reconcile_pool
    from statehold.engine.node import Node

    engine = Node(tmp_path / "home")  # a real, empty home: p3 is not (or no longer) here
    try:
        kube.patch(STORAGE_POOL, "p3", {"spec": {"decommission": True}})
        reconcile_pool(kube, kube.get(STORAGE_POOL, "p3"), engine, "n3", fake_clock)
        assert [p.name for p in engine.pools()] == []  # neither created nor imported
        st = kube.get(STORAGE_POOL, "p3")["status"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert (st["phase"], ready["status"], ready["reason"]) == ("Pending", "False", "NotOnNode")
    finally:
        engine.close()
