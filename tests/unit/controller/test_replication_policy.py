"""Decisions for replicated volumes (controller/replication_policy): tables and properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.controller.replication_policy import (
    CopyInfo,
    Failover,
    Move,
    Placement,
    PoolRoom,
    Record,
    Refuse,
    Stage,
    choose_failover,
    deduct,
    place_copies,
    plan_copies,
    plan_failover,
    point_key,
    stage_decision,
)
from statehold.kube.nodes import NodeHealth, node_health

GiB = 1 << 30
UP = NodeHealth("x")


def healthy(*names: str, zones: dict[str, str] | None = None) -> dict[str, NodeHealth]:
    return {n: NodeHealth(n, zone=(zones or {}).get(n)) for n in names}


def record(primary: str = "n1", *copies: CopyInfo, epoch: int = 3, **kw: object) -> Record:
    return Record("fast/pvc-1", epoch, primary, tuple(copies), **kw)  # type: ignore[arg-type]


PRIMARY = CopyInfo("n1", "primary", "e3-9", epoch=3)
R2 = CopyInfo("n2", "replica", "e3-7", epoch=3)
R3 = CopyInfo("n3", "replica", "e3-8", epoch=3)
DOWN_FENCED = NodeHealth("n1", ready=False, out_of_service=True)
DOWN = NodeHealth("n1", ready=False)


# -- Node facts ------------------------------------------------------------------------------

def test_node_health_reads_ready_taint_cordon_and_zone() -> None:
    obj = {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
           "spec": {"unschedulable": True, "taints": [
               {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                "effect": "NoExecute"}]},
           "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    h = node_health(obj)
    assert h == NodeHealth("n1", ready=False, out_of_service=True, unschedulable=True, zone="z1")
    assert h.fenced and not h.available
    plain = node_health({"metadata": {"name": "n2"},
                         "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert plain.available and not plain.fenced and plain.zone is None


# -- placement -------------------------------------------------------------------------------

def test_placement_takes_the_roomiest_nodes_and_never_the_primary() -> None:
    pools = [PoolRoom("n1", "p", 500 * GiB), PoolRoom("n2", "p", 50 * GiB),
             PoolRoom("n3", "p", 80 * GiB), PoolRoom("n4", "p", 70 * GiB)]
    got = place_copies(2, 10 * GiB, pools, healthy("n1", "n2", "n3", "n4"), taken={"n1"})
    assert got == (Placement("n3", "p"), Placement("n4", "p"))


def test_placement_spreads_across_zones_before_room() -> None:
    pools = [PoolRoom("a1", "p", 10 * GiB), PoolRoom("a2", "p", 900 * GiB),
             PoolRoom("b1", "p", 20 * GiB), PoolRoom("c1", "p", 15 * GiB)]
    zones = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
    got = place_copies(2, GiB, pools, healthy(*zones, zones=zones), taken={"a1"})
    assert got == (Placement("b1", "p"), Placement("c1", "p"))


def test_placement_uses_the_roomiest_ready_pool_of_a_node() -> None:
    pools = [PoolRoom("n2", "small", 20 * GiB), PoolRoom("n2", "big", 90 * GiB),
             PoolRoom("n2", "gone", 900 * GiB, ready=False),
             PoolRoom("n2", "old", 800 * GiB, retiring=True)]
    assert place_copies(1, GiB, pools, healthy("n2")) == (Placement("n2", "big"),)


def test_placement_refuses_with_the_reason_of_each_node() -> None:
    pools = [PoolRoom("n1", "p", 100 * GiB), PoolRoom("n2", "p", 2 * GiB),
             PoolRoom("n3", "p", 100 * GiB), PoolRoom("n4", "p", 100 * GiB, ready=False)]
    health = healthy("n1", "n2", "n4") | {"n3": NodeHealth("n3", ready=False)}
    got = place_copies(1, 10 * GiB, pools, health, taken={"n1"})
    assert isinstance(got, Refuse) and got.reason == "InsufficientCapacity"
    assert "n2: 2.0GiB free, 10.0GiB needed" in got.message
    assert "n3: not ready" in got.message and "n4: no Ready pool" in got.message


def test_cordoned_and_unknown_nodes_take_no_copy() -> None:
    pools = [PoolRoom("n2", "p", 100 * GiB), PoolRoom("n3", "p", 100 * GiB)]
    health = {"n2": NodeHealth("n2", unschedulable=True)}
    assert isinstance(place_copies(1, GiB, pools, health), Refuse)


def test_deduct_lowers_the_room_of_the_pools_used() -> None:
    pools = [PoolRoom("n2", "p", 10 * GiB), PoolRoom("n3", "p", 10 * GiB)]
    after = deduct(pools, [Placement("n2", "p")], 4 * GiB)
    assert [p.free for p in after] == [6 * GiB, 10 * GiB]


# -- failover --------------------------------------------------------------------------------

def test_failover_picks_the_newest_acknowledged_point() -> None:
    got = choose_failover([PRIMARY, R2, R3, CopyInfo("n4", "replica", "e2-99")], exclude="n1")
    assert isinstance(got, CopyInfo) and got.node == "n3"
    assert point_key("e3-10") > point_key("e3-9") > point_key("e2-99") > point_key(None)


def test_failover_prefers_a_replica_to_a_newer_stale_copy_and_never_seeding() -> None:
    stale = CopyInfo("n4", "stale", "e9-1")
    seeding = CopyInfo("n5", "seeding", None)
    got = choose_failover([R2, stale, seeding], exclude="n1")
    assert isinstance(got, CopyInfo) and got.node == "n2"
    only_stale = choose_failover([stale, seeding], exclude="n1")
    assert isinstance(only_stale, CopyInfo) and only_stale.node == "n4"
    assert isinstance(choose_failover([seeding], exclude="n1"), Refuse)


def test_an_unreachable_copy_is_never_chosen() -> None:
    far = CopyInfo("n3", "replica", "e3-99", reachable=False)
    got = choose_failover([R2, far], exclude="n1")
    assert isinstance(got, CopyInfo) and got.node == "n2"


def test_failover_happens_only_when_the_primary_is_fenced() -> None:
    rec = record("n1", PRIMARY, R2, R3)
    assert plan_failover(rec, healthy("n1", "n2", "n3")) is None
    assert plan_failover(rec, {"n1": DOWN}) is None                       # may still write
    assert plan_failover(rec, {"n1": NodeHealth("n1", out_of_service=True)}) is None  # ready
    assert plan_failover(rec, {"n1": DOWN_FENCED}) == Failover("n3", 4, "e3-8")


def test_an_explicit_promote_names_the_copy_even_when_the_primary_is_up() -> None:
    rec = record("n1", PRIMARY, R2, R3, promote="n2")
    assert plan_failover(rec, healthy("n1", "n2", "n3")) == Failover("n2", 4, "e3-7")
    seeding = record("n1", PRIMARY, CopyInfo("n2", "seeding"), promote="n2")
    refused = plan_failover(seeding, healthy("n1", "n2"))
    assert isinstance(refused, Refuse) and refused.reason == "CopyNotServable"
    assert plan_failover(record("n1", PRIMARY, promote="n1"), healthy("n1")) is None


# -- the stage-time table (§9) ---------------------------------------------------------------

STAGE_CASES = [
    ("primary stages", "n1", record("n1", PRIMARY, R2), healthy("n1", "n2"), Stage("n1")),
    ("primary refuses while moving", "n1", record("n1", PRIMARY, R2, moving="n2"),
     healthy("n1", "n2"), Refuse),
    ("replica with a healthy primary: planned move", "n2", record("n1", PRIMARY, R2),
     healthy("n1", "n2"), Move("n1", "n2")),
    ("replica, primary fenced: failover to the newest, here itself", "n3",
     record("n1", PRIMARY, R2, R3), {"n1": DOWN_FENCED}, Failover("n3", 4, "e3-8")),
    ("replica, primary fenced, another copy is newer: failover there then move", "n2",
     record("n1", PRIMARY, R2, R3), {"n1": DOWN_FENCED},
     Failover("n3", 4, "e3-8", then_move_to="n2")),
    ("replica, primary NotReady only: refused", "n2", record("n1", PRIMARY, R2),
     {"n1": DOWN}, Refuse),
    ("replica, promote asked for it", "n2", record("n1", PRIMARY, R2, promote="n2"),
     {"n1": DOWN}, Failover("n2", 4, "e3-7")),
    ("seeding copy refused", "n2", record("n1", PRIMARY, CopyInfo("n2", "seeding")),
     {"n1": DOWN_FENCED}, Refuse),
    ("stale copy refused", "n2", record("n1", PRIMARY, CopyInfo("n2", "stale", "e2-4")),
     healthy("n1", "n2"), Refuse),
    ("no copy refused", "n9", record("n1", PRIMARY), healthy("n1"), Refuse),
]


def test_stage_decision_table() -> None:
    for name, node, rec, health, want in STAGE_CASES:
        got = stage_decision(node, rec, health)
        if want is Refuse:
            assert isinstance(got, Refuse), (name, got)
        else:
            assert got == want, name


# -- copies over time ------------------------------------------------------------------------

def test_missing_copies_are_placed() -> None:
    rec = record("n1", PRIMARY, replicas=3, size=GiB)
    pools = [PoolRoom(n, "p", 10 * GiB) for n in ("n1", "n2", "n3")]
    plan = plan_copies(rec, pools, healthy("n1", "n2", "n3"))
    assert plan.add == (Placement("n2", "p"), Placement("n3", "p")) and plan.refuse is None


def test_retiring_replica_is_replaced_and_released_only_after_the_new_one_acknowledges() -> None:
    pools = [PoolRoom("n1", "p", 10 * GiB), PoolRoom("n2", "p", 10 * GiB, retiring=True),
             PoolRoom("n3", "p", 10 * GiB)]
    health = healthy("n1", "n2", "n3")
    r2 = CopyInfo("n2", "replica", "e3-7", pool="p")
    first = plan_copies(record("n1", PRIMARY, r2, replicas=2, size=GiB), pools, health,
                        retiring={("n2", "p")})
    assert first.add == (Placement("n3", "p"),) and first.release == ()
    seeding = plan_copies(record("n1", PRIMARY, r2, CopyInfo("n3", "seeding", pool="p"),
                                 replicas=2, size=GiB), pools, health, retiring={("n2", "p")})
    assert seeding.add == () and seeding.release == ()
    done = plan_copies(record("n1", PRIMARY, r2, CopyInfo("n3", "replica", "e3-9", pool="p"),
                              replicas=2, size=GiB), pools, health, retiring={("n2", "p")})
    assert done.release == ("n2",)


def test_retiring_primary_moves_to_the_newest_replica_outside() -> None:
    pools = [PoolRoom("n1", "p", 10 * GiB, retiring=True), PoolRoom("n2", "p", 10 * GiB),
             PoolRoom("n3", "p", 10 * GiB)]
    p = CopyInfo("n1", "primary", "e3-9", pool="p")
    plan = plan_copies(record("n1", p, R2, R3, replicas=2, size=GiB), pools,
                       healthy("n1", "n2", "n3"), retiring={("n1", "p")})
    assert plan.move_to == "n3" and plan.release == () and plan.add == ()


def test_retirement_refuses_without_room_and_releases_nothing() -> None:
    pools = [PoolRoom("n1", "p", 10 * GiB), PoolRoom("n2", "p", 10 * GiB, retiring=True),
             PoolRoom("n3", "p", GiB // 2)]
    r2 = CopyInfo("n2", "replica", "e3-7", pool="p")
    plan = plan_copies(record("n1", PRIMARY, r2, replicas=2, size=GiB), pools,
                       healthy("n1", "n2", "n3"), retiring={("n2", "p")})
    assert plan.refuse is not None and plan.refuse.reason == "InsufficientCapacity"
    assert plan.release == () and plan.add == ()


# -- properties ------------------------------------------------------------------------------

NODES = [f"n{i}" for i in range(1, 7)]
points = st.one_of(st.none(), st.builds(lambda e, s: f"e{e}-{s}", st.integers(1, 4),
                                        st.integers(1, 30)))
copies = st.lists(st.builds(CopyInfo, st.sampled_from(NODES),
                            st.sampled_from(["replica", "seeding", "stale", "unknown"]), points,
                            reachable=st.booleans()),
                  max_size=6, unique_by=lambda c: c.node)
healths = st.dictionaries(st.sampled_from(NODES), st.builds(
    NodeHealth, st.sampled_from(NODES), st.booleans(), st.booleans(), st.booleans(),
    st.sampled_from([None, "a", "b"])))


@given(copies, st.booleans())
@settings(max_examples=300)
def test_failover_never_picks_seeding_or_stale_when_a_replica_qualifies(
        cs: list[CopyInfo], _: bool) -> None:
    got = choose_failover(cs, exclude="n1")
    qualifying = [c for c in cs if c.node != "n1" and c.reachable and c.role == "replica"
                  and c.point is not None]
    if qualifying:
        assert isinstance(got, CopyInfo) and got.role == "replica"
        assert point_key(got.point) == max(point_key(c.point) for c in qualifying)
    if isinstance(got, CopyInfo):
        assert got.role != "seeding" and got.point is not None and got.reachable
        assert got.node != "n1"


@given(copies, healths, st.integers(1, 50), st.sampled_from([None, *NODES]))
@settings(max_examples=300)
def test_the_epoch_only_increases_and_one_copy_is_chosen(
        cs: list[CopyInfo], health: dict[str, NodeHealth], epoch: int,
        promote: str | None) -> None:
    rec = Record("fast/v", epoch, "n1", (CopyInfo("n1", "primary", None), *cs), promote=promote)
    got = plan_failover(rec, health)
    if isinstance(got, Failover):
        assert got.epoch == epoch + 1
        assert got.to != "n1"
        assert sum(1 for c in rec.copies if c.node == got.to) == 1


@given(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(["p", "q"]),
                          st.integers(0, 100)), max_size=12),
       healths, st.integers(1, 5), st.sets(st.sampled_from(NODES), max_size=3))
@settings(max_examples=300)
def test_placement_never_puts_two_copies_on_one_node(
        raw: list[tuple[str, str, int]], health: dict[str, NodeHealth], count: int,
        taken: set[str]) -> None:
    pools = [PoolRoom(n, p, free * GiB) for n, p, free in raw]
    got = place_copies(count, 10 * GiB, pools, health, taken)
    if isinstance(got, Refuse):
        return
    nodes = [p.node for p in got]
    assert len(nodes) == count == len(set(nodes))
    assert not set(nodes) & taken
    for p in got:
        assert any(q.node == p.node and q.pool == p.pool and q.free >= 10 * GiB for q in pools)
        assert health[p.node].available


@given(copies, healths, st.sampled_from(NODES), st.sampled_from([None, *NODES]))
@settings(max_examples=300)
def test_stage_decisions_stage_only_the_recorded_primary(
        cs: list[CopyInfo], health: dict[str, NodeHealth], node: str,
        promote: str | None) -> None:
    rec = Record("fast/v", 5, "n1", (CopyInfo("n1", "primary", "e5-1"), *[
        c for c in cs if c.node != "n1"]), promote=promote)
    got = stage_decision(node, rec, health)
    if isinstance(got, Stage):
        assert got.node == rec.primary == node
    if isinstance(got, Failover):
        assert got.epoch == 6 and rec.copy_on(got.to) is not None
        assert rec.copy_on(got.to).role in ("replica", "stale")  # type: ignore[union-attr]
