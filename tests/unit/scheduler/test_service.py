"""The extender service with real request JSON: answers, faults, reservations, the burst."""

from __future__ import annotations

import json
from typing import Any

import pytest

from statehold.errors import Unavailable
from statehold.scheduler.core import GiB, PoolState
from statehold.scheduler.ledger import Ledger
from statehold.scheduler.service import Extender, ExtenderConfig
from statehold.scheduler.view import DRIVER, ClaimInfo, MemoryClusterView, StorageClassInfo
from tests.unit.scheduler import shapes
from tests.unit.scheduler.simulate import Burst, committed

SC = StorageClassInfo("statehold-local", DRIVER, True, {"type": "local"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def cluster(nodes: int, pool_gib: int, *, ratio: float = 1.0) -> MemoryClusterView:
    return MemoryClusterView(classes=[SC], pools=[
        PoolState(f"n{i}", f"n{i}-pool", pool_gib * GiB, 0, ratio) for i in range(nodes)])


def extender(view: MemoryClusterView, clock: Clock | None = None, **config: Any) -> Extender:
    clock = clock or Clock()
    return Extender(view, ledger=Ledger(ttl=120, settle=15, clock=clock),
                    config=ExtenderConfig(sweep_interval=0, **config), clock=clock)


class BrokenView(MemoryClusterView):
    def claim(self, namespace: str, name: str) -> ClaimInfo | None:
        raise Unavailable("apiserver unreachable")


def test_pod_without_statehold_claims_passes_untouched() -> None:
    ext = extender(cluster(3, 10))
    pod = shapes.pod("web-0", [])
    assert ext.filter(body(shapes.args(pod, ["n0", "n1", "n9"])))[1] == {
        "Nodes": None, "NodeNames": ["n0", "n1", "n9"], "FailedNodes": {},
        "FailedAndUnresolvableNodes": {}, "Error": ""}
    status, scores = ext.prioritize(body(shapes.args(pod, ["n0", "n1"])))
    assert status == 200 and scores == [{"Host": "n0", "Score": 0}, {"Host": "n1", "Score": 0}]
    assert ext.ledger.all() == ()


def test_filter_reserves_on_its_best_node_and_prioritize_confirms_it() -> None:
    view = cluster(3, 100)
    view.put_pool(PoolState("n1", "n1-pool", 100 * GiB, 50 * GiB))
    view.put_claim(ClaimInfo("default", "data", "statehold-local", 10 * GiB))
    ext = extender(view)
    pod = shapes.pod("pg-0", ["data"], uid="u1")
    out = ext.filter(body(shapes.args(pod, ["n0", "n1", "n2"])))[1]
    assert out["NodeNames"] == ["n0", "n1", "n2"]
    [r] = ext.ledger.all()
    assert (r.pod, r.node, r.placement) == ("u1", "n0", (("n0-pool", 10 * GiB),))
    _, scores = ext.prioritize(body(shapes.args(pod, ["n1", "n2"])))
    assert {s["Host"]: s["Score"] for s in scores} == {"n1": 6, "n2": 7}
    [r] = ext.ledger.all()
    assert r.node == "n2"  # re-reserved among the nodes that survived every filter


def test_pod_that_fits_nowhere_gets_reasons_and_drops_its_reservation() -> None:
    view = cluster(2, 10)
    view.put_claim(ClaimInfo("default", "data", "statehold-local", 5 * GiB))
    ext = extender(view)
    pod = shapes.pod("pg-0", ["data"], uid="u1")
    ext.filter(body(shapes.args(pod, ["n0", "n1"])))
    assert len(ext.ledger.all()) == 1
    view.put_claim(ClaimInfo("default", "data", "statehold-local", 50 * GiB))
    out = ext.filter(body(shapes.args(pod, ["n0", "n1"])))[1]
    assert out["NodeNames"] == []
    assert "claim default/data (50.0GiB) does not fit" in out["FailedAndUnresolvableNodes"]["n0"]
    assert ext.ledger.all() == ()


def test_unknown_claim_is_a_reason_on_every_node_not_an_error() -> None:
    ext = extender(cluster(2, 10))
    status, out = ext.filter(body(shapes.args(shapes.pod("pg-0", ["ghost"]), ["n0", "n1"])))
    assert status == 200 and out["Error"] == "" and out["NodeNames"] == []
    assert out["FailedAndUnresolvableNodes"] == {
        n: "persistentvolumeclaim default/ghost not found" for n in ("n0", "n1")}


def test_internal_error_fails_open_by_default() -> None:
    ext = extender(BrokenView(classes=[SC]))
    status, out = ext.filter(body(shapes.args(shapes.pod("pg-0", ["d"]), ["n0", "n1"])))
    assert (status, out["NodeNames"], out["Error"]) == (200, ["n0", "n1"], "")
    status, scores = ext.prioritize(body(shapes.args(shapes.pod("pg-0", ["d"]), ["n0"])))
    assert (status, scores) == (200, [{"Host": "n0", "Score": 0}])
    assert b"statehold_extender_fail_open_total 1.0" in ext.metrics.exposition()


def test_internal_error_fails_closed_when_configured() -> None:
    ext = extender(BrokenView(classes=[SC]), fail_open=False)
    status, out = ext.filter(body(shapes.args(shapes.pod("pg-0", ["d"]), ["n0", "n1"])))
    assert status == 200 and out["NodeNames"] == []
    assert "apiserver unreachable" in out["Error"]


@pytest.mark.parametrize("raw", [b"", b"{oops", b"{}", b'{"NodeNames": ["n0"]}', b"null"])
def test_bad_input_gets_a_well_formed_answer(raw: bytes) -> None:
    ext = extender(cluster(1, 1))
    status, out = ext.filter(raw)
    assert status == 200 and out["Error"].startswith("statehold: ")
    assert out["NodeNames"] is None and out["FailedNodes"] == {}
    status, out = ext.prioritize(raw)
    assert status == 400 and out["Error"].startswith("statehold: ")


def _burst_cluster(pods: int, size_gib: int, nodes: int, pool_gib: int):
    view = cluster(nodes, pool_gib)
    claims_of: dict[str, list[ClaimInfo]] = {}
    for i in range(pods):
        c = ClaimInfo("default", f"data-pg-{i}", "statehold-local", size_gib * GiB)
        view.put_claim(c)
        claims_of[f"pg-{i}"] = [c]
    return view, claims_of


@pytest.mark.parametrize("choose", ["top", "any"])
def test_burst_of_100_pods_never_overcommits_a_pool(choose: str) -> None:
    """100 pods arrive at once; 10 nodes with 95 GiB each can hold 90 of them at 10 GiB.
    No volume is provisioned (no pool status changes) until the whole burst is placed."""
    view, claims_of = _burst_cluster(100, 10, 10, 95)
    clock = Clock()
    ext = extender(view, clock)
    burst = Burst(lambda verb, b: getattr(ext, verb)(b), view, [f"n{i}" for i in range(10)],
                  choose=choose)
    for i in range(100):
        clock.now += 0.01
        burst.schedule(shapes.pod(f"pg-{i}", [f"data-pg-{i}"]), claims_of[f"pg-{i}"])
    per_node = committed(burst, claims_of)
    assert all(used <= 95 * GiB for used in per_node.values()), per_node
    assert len(burst.placed) == 90 and len(burst.unschedulable) == 10
    assert ext.ledger.total() == 900 * GiB
    # Provisioning catches up: reservations end after settling, pools hold the truth.
    burst.provision(claims_of)
    ext.filter(body(shapes.args(shapes.pod("x", []), ["n0"])))
    clock.now += 15
    ext.filter(body(shapes.args(shapes.pod("y", []), ["n0"])))  # any request sweeps
    assert ext.ledger.all() == ()
    assert all(p[0].allocated <= p[0].limit for p in view.pools().values())


def test_without_reservations_the_same_burst_overcommits() -> None:
    """The control: a ledger that forgets every reservation lets the burst pile onto the
    nodes that look emptiest, as TopoLVM's stale annotations do."""

    class Forgetful(Ledger):
        def reserved(self, exclude: str | None = None) -> dict:
            return {}

    view, claims_of = _burst_cluster(100, 10, 10, 95)
    ext = Extender(view, ledger=Forgetful(), config=ExtenderConfig(sweep_interval=0))
    burst = Burst(lambda verb, b: getattr(ext, verb)(b), view, [f"n{i}" for i in range(10)])
    for i in range(100):
        burst.schedule(shapes.pod(f"pg-{i}", [f"data-pg-{i}"]), claims_of[f"pg-{i}"])
    assert max(committed(burst, claims_of).values()) > 95 * GiB


def test_reservation_expires_when_the_pod_never_lands() -> None:
    view, _ = _burst_cluster(1, 10, 1, 15)
    clock = Clock()
    ext = extender(view, clock)
    first = shapes.pod("pg-0", ["data-pg-0"])
    assert ext.filter(body(shapes.args(first, ["n0"])))[1]["NodeNames"] == ["n0"]
    view.put_claim(ClaimInfo("default", "other", "statehold-local", 10 * GiB))
    second = shapes.pod("pg-1", ["other"])
    assert ext.filter(body(shapes.args(second, ["n0"])))[1]["NodeNames"] == []
    clock.now += 121
    assert ext.filter(body(shapes.args(second, ["n0"])))[1]["NodeNames"] == ["n0"]
