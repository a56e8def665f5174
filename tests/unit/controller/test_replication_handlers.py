"""The ReplicatedVolume reconciler on MemoryKube with a fake of the node agents: records,
labels, failover with the compare-and-set first, planned moves, retirement, clean-up."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statehold.controller.replication import reconcile_volume, replication_pass
from statehold.controller.schemas import validate_custom_resource
from statehold.errors import InvalidArgument, Unavailable
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME, STORAGE_POOL
from statehold.replication.points import node_label
from tests.unit.controller.replication_fakes import (
    HANDLE,
    FakeAgents,
    GiB,
    LoggingKube,
    node,
    pool,
    replicated_pv,
    set_ready,
    taint_out_of_service,
)

LABEL = node_label(HANDLE)


@pytest.fixture
def agents() -> FakeAgents:
    return FakeAgents()


@pytest.fixture
def kube(agents: FakeAgents, fake_clock: Any) -> LoggingKube:
    k = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    for i, free in ((1, 100), (2, 300), (3, 200)):
        node(k, f"n{i}")
        pool(k, f"p{i}", f"n{i}", free * GiB)
    return k


def rv(kube: LoggingKube) -> dict[str, Any]:
    return kube.get(REPLICATED_VOLUME, "pvc-1")


def labelled(kube: LoggingKube) -> list[str]:
    return [n["metadata"]["name"] for n in kube.list(NODE, label_selector={LABEL: "true"})]


def reasons(kube: LoggingKube) -> list[str]:
    return [e["reason"] for e in kube.events_for(rv(kube))]


def running(kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    """A 2-copy volume made on n1, its replica on n2 (most free) acknowledged."""
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    replication_pass(kube, agents, fake_clock)
    agents.replicate()
    replication_pass(kube, agents, fake_clock)


def test_a_replicated_pv_gets_a_record_epoch_1_a_label_and_a_replica(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    replication_pass(kube, agents, fake_clock)
    got = rv(kube)
    assert got["spec"] == {"volumeHandle": HANDLE, "replicas": 2, "rpoSeconds": 15,
                           "size": 10 * GiB}
    assert (got["status"]["epoch"], got["status"]["primary"]) == (1, "n1")
    # the record first, then the copy that CreateVolume made becomes primary at epoch 1
    assert agents.log.index(("cas", 1, "n1", None)) < agents.log.index(("promote", "n1", 1))
    assert agents.calls("create_copy") == [("create_copy", "n2", "p2")]  # the most free
    assert agents.replicas[("n1", HANDLE)] == ("n2",)
    assert agents.rpo[("n1", HANDLE)] == 15  # the primary exports it beside the lag
    assert labelled(kube) == ["n1"]          # a seeding copy cannot serve: no label yet
    by_node = {c["node"]: c for c in got["status"]["copies"]}
    assert by_node["n1"]["state"] == "Serving" and by_node["n2"]["role"] == "seeding"

    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    got = rv(kube)
    assert labelled(kube) == ["n1", "n2"]
    assert {c["node"]: (c["role"], c.get("point")) for c in got["status"]["copies"]} == {
        "n1": ("primary", "e1-1"), "n2": ("replica", "e1-1")}
    ready = next(c for c in got["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert agents.calls("create_copy") == [("create_copy", "n2", "p2")]  # not again


def test_copies_spread_across_zones(agents: FakeAgents, fake_clock: Any) -> None:
    kube = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    for name, zone, free in (("a1", "a", 100), ("a2", "a", 900), ("b1", "b", 50)):
        node(kube, name, zone=zone)
        pool(kube, f"p-{name}", name, free * GiB)
    agents.made_by_create_volume("a1")
    replicated_pv(kube, node_name="a1", replicas=2)
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("create_copy") == [("create_copy", "b1", "p-b1")]


def test_a_copy_is_recorded_by_compare_and_set_before_it_is_made(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"replicas": 3}})
    kube.conflicts = 1                      # another pass wrote the record meanwhile
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert agents.calls("create_copy") == [("create_copy", "n2", "p2")]  # none placed now
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert agents.calls("create_copy")[1:] == [("create_copy", "n3", "p3")]
    entry = next(c for c in rv(kube)["status"]["copies"] if c["node"] == "n3")
    assert entry["role"] == "seeding"


def test_no_room_for_a_replica_is_a_condition_not_a_copy(
        agents: FakeAgents, fake_clock: Any) -> None:
    kube = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    node(kube, "n1")
    pool(kube, "p1", "n1")
    node(kube, "n2")
    pool(kube, "p2", "n2", free=GiB)
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    replication_pass(kube, agents, fake_clock)
    ready = next(c for c in rv(kube)["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InsufficientCapacity")
    assert "n2: 1.0GiB free, 10.0GiB needed" in ready["message"]
    assert agents.calls("create_copy") == []


def test_out_of_service_primary_fails_over_with_the_record_written_before_promote(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.down.add("n1")
    set_ready(kube, "n1", False)
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["status"]["primary"] == "n1"          # NotReady alone: may still write
    assert agents.calls("promote")[-1] == ("promote", "n1", 1)
    cond = next(c for c in rv(kube)["status"]["conditions"] if c["type"] == "Ready")
    assert cond["reason"] == "PrimaryUnreachable"

    taint_out_of_service(kube, "n1")
    start = len(agents.log)
    replication_pass(kube, agents, fake_clock)
    status = rv(kube)["status"]
    assert (status["epoch"], status["primary"]) == (2, "n2")
    tail = agents.log[start:]
    assert tail.index(("cas", 2, "n2", None)) < tail.index(("promote", "n2", 2))
    assert "FailedOver" in reasons(kube)
    assert agents.writable(HANDLE, 2) == ["n2"]


def test_the_new_primary_is_given_the_volume_s_own_rpo_with_its_replicas(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    agents.made_by_create_volume("n1")
    replicated_pv(kube, rpo=45)
    replication_pass(kube, agents, fake_clock)
    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    assert (rv(kube)["spec"]["rpoSeconds"], agents.rpo[("n1", HANDLE)]) == (45, 45)
    agents.down.add("n1")
    set_ready(kube, "n1", False)
    taint_out_of_service(kube, "n1")
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["status"]["primary"] == "n2"
    agents.down.discard("n1")  # back, fenced, resynced from n2
    set_ready(kube, "n1", True)
    taint_out_of_service(kube, "n1", on=False)
    replication_pass(kube, agents, fake_clock)
    assert agents.replicas[("n2", HANDLE)] == ("n1",)
    assert agents.rpo[("n2", HANDLE)] == 45  # the alert follows the volume to its new primary


def test_the_old_primary_returning_is_fenced_and_never_writable(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.down.add("n1")
    set_ready(kube, "n1", False)
    taint_out_of_service(kube, "n1")
    replication_pass(kube, agents, fake_clock)
    # n1 comes back still believing it is the primary at epoch 1
    agents.down.discard("n1")
    set_ready(kube, "n1", True)
    taint_out_of_service(kube, "n1", on=False)
    replication_pass(kube, agents, fake_clock)
    assert ("demote", "n1", 2) in agents.log
    assert agents.copies[("n1", HANDLE)].role == "stale"
    assert agents.writable(HANDLE, rv(kube)["status"]["epoch"]) == ["n2"]
    assert agents.replicas[("n2", HANDLE)] == ("n1",)      # resynced from the new primary
    assert "n1" not in labelled(kube)                      # a stale copy cannot serve
    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    assert agents.copies[("n1", HANDLE)].role == "replica" and labelled(kube) == ["n1", "n2"]


def test_a_lost_compare_and_set_never_promotes(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.down.add("n1")
    set_ready(kube, "n1", False)
    taint_out_of_service(kube, "n1")
    promotes = len(agents.calls("promote"))
    kube.conflicts = 1
    result, _ = reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert result.outcome == "retry"
    assert ("cas-conflict", 2, "n2") in agents.log
    assert len(agents.calls("promote")) == promotes
    assert rv(kube)["status"]["epoch"] == 1
    reconcile_volume(kube, agents, rv(kube), fake_clock)   # decided again on a fresh read
    assert agents.calls("promote")[-1] == ("promote", "n2", 2)


def test_a_promote_lost_after_the_record_is_finished_by_the_next_pass(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.down.add("n1")
    set_ready(kube, "n1", False)
    taint_out_of_service(kube, "n1")
    agents.refuse_promote.add("n2")            # n2's agent drops the Promote call
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["status"]["primary"] == "n2" and agents.writable(HANDLE, 2) == []
    assert "PromoteFailed" in reasons(kube)
    agents.refuse_promote.clear()
    replication_pass(kube, agents, fake_clock)
    assert agents.writable(HANDLE, 2) == ["n2"]


def test_an_explicit_promote_whose_call_failed_is_finished_and_cleared(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"promote": {"node": "n2"}}})
    agents.refuse_promote.add("n2")
    replication_pass(kube, agents, fake_clock)            # recorded; the promote failed
    assert rv(kube)["status"]["primary"] == "n2" and agents.writable(HANDLE, 2) == []
    agents.refuse_promote.clear()
    replication_pass(kube, agents, fake_clock)
    assert agents.writable(HANDLE, 2) == ["n2"] and "promote" not in rv(kube)["spec"]


def test_explicit_promote_is_handled_once_and_cleared(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"promote": {"node": "n2"}}})
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    got = rv(kube)
    assert (got["status"]["epoch"], got["status"]["primary"]) == (2, "n2")
    assert "promote" not in got["spec"]
    assert agents.copies[("n1", HANDLE)].role == "stale"   # alive: fenced at once
    assert agents.writable(HANDLE, 2) == ["n2"]
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert [c for c in agents.calls("promote") if c[2] == 3] == []
    assert "Promoted" in reasons(kube)


def test_promote_of_a_seeding_copy_is_refused_and_the_request_cleared(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    replication_pass(kube, agents, fake_clock)       # n2 created, still seeding
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"promote": {"node": "n2"}}})
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    got = rv(kube)
    assert got["status"]["epoch"] == 1 and "promote" not in got["spec"]
    assert "CopyNotServable" in reasons(kube)


def test_planned_move_waits_for_unstage_then_moves_with_nothing_lost(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.staged.add("n1")
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"move": {"to": "n2"}}})
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    got = rv(kube)
    assert got["status"]["moving"] == {"to": "n2", "epoch": 1}
    assert got["status"]["primary"] == "n1"
    agents.staged.discard("n1")                      # the pod is gone
    start = len(agents.log)
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    got = rv(kube)
    assert (got["status"]["epoch"], got["status"]["primary"]) == (2, "n2")
    assert "moving" not in got["status"] and "move" not in got["spec"]
    order = [c for c in agents.log[start:] if c[0] in ("final_sync", "cas", "promote", "demote")]
    assert order[:4] == [("final_sync", "n1", "n2"), ("cas", 2, "n2", None),
                         ("promote", "n2", 2), ("demote", "n1", 2)]
    # the final point reached n2 before it was promoted
    assert agents.copies[("n2", HANDLE)].point == agents.copies[("n1", HANDLE)].point
    assert agents.writable(HANDLE, 2) == ["n2"] and "Moved" in reasons(kube)


def test_a_move_whose_final_sync_fails_is_abandoned_without_spending_an_epoch(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    agents.sync_error = Unavailable("link down")
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"move": {"to": "n2"}}})
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    got = rv(kube)
    assert (got["status"]["epoch"], got["status"]["primary"]) == (1, "n1")
    assert "moving" not in got["status"] and "move" not in got["spec"]
    assert "MoveAbandoned" in reasons(kube)
    assert agents.writable(HANDLE, 1) == ["n1"]


def test_move_to_a_node_without_a_copy_seeds_one_first(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"move": {"to": "n3"}}})
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert ("create_copy", "n3", "p3") in agents.log
    assert "moving" not in rv(kube)["status"]
    assert agents.replicas[("n1", HANDLE)] == ("n2", "n3")
    agents.replicate()
    reconcile_volume(kube, agents, rv(kube), fake_clock)
    assert rv(kube)["status"]["primary"] == "n3"


def test_retiring_a_replica_pool_replaces_the_copy_then_releases_it(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(STORAGE_POOL, "p2", {"spec": {"decommission": True}})
    replication_pass(kube, agents, fake_clock)
    assert ("create_copy", "n3", "p3") in agents.log and agents.calls("release") == []
    cond = next(c for c in kube.get(STORAGE_POOL, "p2")["status"]["conditions"]
                if c["type"] == "Retiring")
    assert (cond["status"], cond["reason"]) == ("True", "InProgress")
    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("release") == [("release", "n2")]
    assert labelled(kube) == ["n1", "n3"]
    replication_pass(kube, agents, fake_clock)
    cond = next(c for c in kube.get(STORAGE_POOL, "p2")["status"]["conditions"]
                if c["type"] == "Retiring")
    assert (cond["status"], cond["reason"]) == ("True", "Retired")


def test_retiring_the_primary_pool_moves_the_primary_away(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.patch(STORAGE_POOL, "p1", {"spec": {"decommission": True}})
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["spec"]["move"] == {"to": "n2"}
    replication_pass(kube, agents, fake_clock)
    assert rv(kube)["status"]["primary"] == "n2"
    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    agents.replicate()
    replication_pass(kube, agents, fake_clock)
    assert ("release", "n1") in agents.log
    assert sorted(n for (n, _), _c in agents.copies.items()) == ["n2", "n3"]


def test_retirement_without_room_is_refused_with_a_condition(
        agents: FakeAgents, fake_clock: Any) -> None:
    kube = LoggingKube(agents.log, now=fake_clock, admit=validate_custom_resource)
    node(kube, "n1")
    pool(kube, "p1", "n1")
    node(kube, "n2")
    pool(kube, "p2", "n2")
    running(kube, agents, fake_clock)
    kube.patch(STORAGE_POOL, "p2", {"spec": {"decommission": True}})
    replication_pass(kube, agents, fake_clock)
    cond = next(c for c in kube.get(STORAGE_POOL, "p2")["status"]["conditions"]
                if c["type"] == "Retiring")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientCapacity")
    assert agents.calls("release") == []


def test_a_deleted_pv_releases_the_replicas_and_the_record(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    kube.delete(PV, "pvc-1")
    replication_pass(kube, agents, fake_clock)
    assert agents.calls("release") == [("release", "n2")]
    assert labelled(kube) == []
    assert kube.list(REPLICATED_VOLUME) == []


def test_the_record_refuses_a_smaller_epoch(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    running(kube, agents, fake_clock)
    got = rv(kube)
    got["status"]["epoch"] = 5
    got = kube.replace_status(got)
    got["status"]["epoch"] = 4
    with pytest.raises(InvalidArgument, match="never decreases"):
        kube.replace_status(got)


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("fence"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("recover"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("down"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("promote"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("move"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("replicate"), st.just("")),
    st.tuples(st.just("conflict"), st.just("")),
), min_size=1, max_size=14)


@given(EVENTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_two_writable_copies_and_the_epoch_only_grows(events: list[tuple[str, str]]) -> None:
    from datetime import UTC, datetime

    def clock() -> datetime:
        return datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

    agents = FakeAgents()
    kube = LoggingKube(agents.log, now=clock, admit=validate_custom_resource)
    for i in (1, 2, 3):
        node(kube, f"n{i}")
        pool(kube, f"p{i}", f"n{i}", 100 * GiB)
    agents.made_by_create_volume("n1")
    replicated_pv(kube, replicas=3)
    replication_pass(kube, agents, clock)
    epochs = [rv(kube)["status"]["epoch"]]
    for what, who in events:
        if what == "fence":
            agents.down.add(who)
            set_ready(kube, who, False)
            taint_out_of_service(kube, who)
        elif what == "down":
            agents.down.add(who)
            set_ready(kube, who, False)
        elif what == "recover":
            agents.down.discard(who)
            set_ready(kube, who, True)
            taint_out_of_service(kube, who, on=False)
        elif what in ("promote", "move"):
            body = {"promote": {"node": who}} if what == "promote" else {"move": {"to": who}}
            spec = rv(kube)["spec"]
            if "promote" not in spec and "move" not in spec:
                kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": body})
        elif what == "replicate":
            agents.replicate()
        else:
            kube.conflicts = 1
        replication_pass(kube, agents, clock)
        status = rv(kube)["status"]
        epochs.append(status["epoch"])
        writable = agents.writable(HANDLE, status["epoch"])
        assert len(writable) <= 1, (writable, status)
        assert writable in ([], [status["primary"]])
        # every promote at an epoch came after that epoch was recorded for that node
        for i, call in enumerate(agents.log):
            if call[0] == "promote":
                assert any(c[0] == "cas" and c[1] == call[2] and c[2] == call[1]
                           for c in agents.log[:i]), call
    assert epochs == sorted(epochs)


def test_the_cluster_role_runs_replicated_volumes_only_with_the_agents(
        kube: LoggingKube, agents: FakeAgents, fake_clock: Any) -> None:
    from statehold.controller.operator import cluster_registry, cluster_tickers
    from tests.unit.controller.test_operator_wiring import handlers

    assert "replicatedvolumes" not in {p for p, _ in handlers(cluster_registry(kube, fake_clock))}
    found = handlers(cluster_registry(kube, fake_clock, agents))
    assert ("replicatedvolumes", "replication") in found
    assert "replication" not in [t.name for t in cluster_tickers(kube, fake_clock)]
    tickers = {t.name: t for t in cluster_tickers(kube, fake_clock, agents=agents)}
    agents.made_by_create_volume("n1")
    replicated_pv(kube)
    tickers["replication"].tick()
    assert rv(kube)["status"]["primary"] == "n1"
    # the kopf handler re-reads the record and reconciles it
    kube.patch(REPLICATED_VOLUME, "pvc-1", {"spec": {"promote": {"node": "n2"}}})
    found[("replicatedvolumes", "replication")].fn(name="pvc-1", namespace=None)
    assert rv(kube)["status"]["primary"] == "n1"  # n2 is still seeding: refused
    assert "CopyNotServable" in reasons(kube)
