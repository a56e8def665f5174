"""The reservation ledger with a fake clock: reserve, replace, expire, settle, follow."""

from __future__ import annotations

from statehold.scheduler.core import ClaimKey, GiB, PoolState
from statehold.scheduler.ledger import Ending, Ledger
from statehold.scheduler.view import ClaimInfo, MemoryClusterView

A = ClaimKey("default", "a")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(ttl: float = 60.0, settle: float = 10.0) -> tuple[Ledger, Clock]:
    clock = Clock()
    return Ledger(ttl=ttl, settle=settle, clock=clock), clock


def test_reserved_sums_per_node_pool_and_excludes_the_asking_pod() -> None:
    ledger, _ = make()
    ledger.reserve("u1", "ns/p1", "n1", (("p", 5 * GiB),), (A,))
    ledger.reserve("u2", "ns/p2", "n1", (("p", 3 * GiB), ("q", GiB)), (A,))
    assert ledger.reserved() == {("n1", "p"): 8 * GiB, ("n1", "q"): GiB}
    assert ledger.reserved(exclude="u1") == {("n1", "p"): 3 * GiB, ("n1", "q"): GiB}
    assert ledger.total() == 9 * GiB


def test_a_pod_holds_one_reservation_the_newest() -> None:
    ledger, _ = make()
    ledger.reserve("u1", "ns/p1", "n1", (("p", 5 * GiB),), (A,))
    ledger.reserve("u1", "ns/p1", "n2", (("p", 5 * GiB),), (A,))
    assert [r.node for r in ledger.all()] == ["n2"]
    assert ledger.release("u1") is not None
    assert ledger.release("u1") is None
    assert ledger.reserved() == {}


def test_reservation_expires_after_ttl() -> None:
    ledger, clock = make(ttl=60)
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    clock.now += 59.9
    assert ledger.sweep() == []
    clock.now += 0.1
    [(r, why)] = ledger.sweep()
    assert (r.pod, why) == ("u1", Ending.EXPIRED)
    assert ledger.all() == ()


def test_reservation_lasts_settle_seconds_after_provisioning() -> None:
    ledger, clock = make(settle=10)
    view = MemoryClusterView(claims=[ClaimInfo("default", "a", "sc", GiB)])
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    assert ledger.sweep(view) == []
    view.put_claim(ClaimInfo("default", "a", "sc", GiB, volume_name="pv-1"))
    assert ledger.sweep(view) == []  # provisioned now: still counted while pools catch up
    assert ledger.reserved() == {("n1", "p"): GiB}
    clock.now += 10
    [(_, why)] = ledger.sweep(view)
    assert why is Ending.PROVISIONED
    assert ledger.reserved() == {}


def test_zero_settle_releases_at_provisioning() -> None:
    ledger, _ = make(settle=0)
    view = MemoryClusterView(claims=[ClaimInfo("default", "a", "sc", GiB, volume_name="pv")])
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    assert [why for _, why in ledger.sweep(view)] == [Ending.PROVISIONED]


def test_deleted_claim_ends_reservation() -> None:
    ledger, _ = make()
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    assert [why for _, why in ledger.sweep(MemoryClusterView())] == [Ending.CLAIM_GONE]


def test_reservation_follows_the_node_the_scheduler_selected() -> None:
    ledger, clock = make(ttl=60)
    view = MemoryClusterView(claims=[ClaimInfo("default", "a", "sc", GiB, selected_node="n2")],
                             pools=[PoolState("n2", "p", 10 * GiB, 0)])
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    clock.now += 50
    [(_, why)] = ledger.sweep(view, lambda r, node: (("p", r.size),))
    assert why is Ending.MOVED
    assert ledger.reserved() == {("n2", "p"): GiB}
    clock.now += 50  # the move renewed the ttl
    assert ledger.sweep(view) == []


def test_sweep_without_view_only_expires() -> None:
    ledger, _ = make()
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    assert ledger.sweep(None) == []
    assert len(ledger.all()) == 1


def test_settling_reservation_is_not_cut_short_by_the_ttl() -> None:
    ledger, clock = make(ttl=60, settle=30)
    view = MemoryClusterView(claims=[ClaimInfo("default", "a", "sc", GiB)])
    ledger.reserve("u1", "ns/p1", "n1", (("p", GiB),), (A,))
    clock.now += 50
    view.put_claim(ClaimInfo("default", "a", "sc", GiB, volume_name="pv-1"))
    assert ledger.sweep(view) == []
    clock.now += 20  # past the ttl, inside the settle time
    assert ledger.sweep(view) == [] and ledger.reserved() == {("n1", "p"): GiB}
    clock.now += 10
    assert [why for _, why in ledger.sweep(view)] == [Ending.PROVISIONED]
