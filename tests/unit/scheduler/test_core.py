"""The pure placement core, table-driven: filter verdicts, scores, ties, placement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.scheduler.core import (
    BoundVolume,
    ClaimKey,
    GiB,
    MiB,
    NodeScore,
    PendingClaim,
    PodVolumes,
    PoolState,
    best_node,
    filter_nodes,
    headroom_score,
    judge_node,
    place,
    score_nodes,
    unique_top,
)

NODES = ("n1", "n2", "n3")
A = ClaimKey("default", "a")
B = ClaimKey("default", "b")


def pools(*specs: tuple[str, str, int, int] | tuple[str, str, int, int, float]) -> dict:
    out: dict[str, tuple[PoolState, ...]] = {}
    for s in specs:
        p = PoolState(s[0], s[1], s[2] * GiB, s[3] * GiB, *(s[4:] or (1.0,)))
        out[p.node] = (*out.get(p.node, ()), p)
    return out


THREE_POOLS = pools(("n1", "p", 100, 0), ("n2", "p", 100, 80), ("n3", "p", 10, 0))

FILTER_CASES = [
    # (id, pod, pools, reserved, passed, failed-reason fragments)
    ("no-statehold-claims-pass-untouched", PodVolumes("ns/p"), {}, {}, NODES, {}),
    ("bound-volume-only-on-its-nodes",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv-a", frozenset({"n2"}), "n2"),)),
     THREE_POOLS, {}, ("n2",),
     {"n1": "whose data is on n2, not on this node", "n3": "default/a"}),
    ("bound-replicated-volume-passes-every-copy",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv-a", frozenset({"n1", "n3"}), "n1"),)),
     {}, {}, ("n1", "n3"), {"n2": "data is on n1, n3"}),
    ("two-bound-volumes-need-a-node-holding-both",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv-a", frozenset({"n1", "n2"})),
                               BoundVolume(B, "pv-b", frozenset({"n2", "n3"})))),
     {}, {}, ("n2",), {"n1": "pv-b", "n3": "pv-a"}),
    ("pending-claim-needs-room",
     PodVolumes("ns/p", pending=(PendingClaim(A, 30 * GiB),)),
     THREE_POOLS, {}, ("n1",), {"n2": "not enough free space", "n3": "10.0GiB free"}),
    ("pending-claims-are-summed",
     PodVolumes("ns/p", pending=(PendingClaim(A, 15 * GiB), PendingClaim(B, 15 * GiB))),
     pools(("n1", "p", 100, 0), ("n2", "p", 100, 75), ("n3", "p", 20, 0)), {},
     ("n1",), {"n2": "not enough", "n3": "not enough"}),
    ("overprovisioning-is-honoured",
     PodVolumes("ns/p", pending=(PendingClaim(A, 150 * GiB),)),
     pools(("n1", "p", 100, 0, 2.0), ("n2", "p", 100, 0, 1.0), ("n3", "p", 100, 40, 2.0)),
     {}, ("n1", "n3"), {"n2": "pool p has 100.0GiB free"}),
    ("reservations-of-other-pods-count",
     PodVolumes("ns/p", pending=(PendingClaim(A, 30 * GiB),)),
     THREE_POOLS, {("n1", "p"): 80 * GiB}, (), {"n1": "after reservations"}),
    ("node-without-capacity-data-fails-with-reason",
     PodVolumes("ns/p", pending=(PendingClaim(A, GiB),)),
     pools(("n1", "p", 100, 0)), {}, ("n1",),
     {"n2": "no capacity data", "n3": "no capacity data"}),
    ("named-pool-must-exist-on-the-node",
     PodVolumes("ns/p", pending=(PendingClaim(A, 2 * GiB, pool="fast"),)),
     pools(("n1", "fast", 10, 0), ("n2", "slow", 100, 0), ("n3", "slow", 1, 0),
           ("n3", "fast", 1, 0)),
     {}, ("n1",), {"n2": "needs pool 'fast'", "n3": "not enough"}),
    ("claims-spread-over-two-pools-of-a-node",
     PodVolumes("ns/p", pending=(PendingClaim(A, 8 * GiB), PendingClaim(B, 8 * GiB))),
     pools(("n1", "x", 10, 0), ("n1", "y", 10, 0), ("n2", "x", 15, 0)), {},
     ("n1",), {"n2": "not enough", "n3": "no capacity data"}),
    ("unknown-claim-fails-every-node",
     PodVolumes("ns/p", problems=("persistentvolumeclaim default/x not found",)),
     THREE_POOLS, {}, (), {n: "default/x not found" for n in NODES}),
    ("claim-being-provisioned-passes-only-the-selected-node-without-capacity-check",
     PodVolumes("ns/p", pending=(PendingClaim(A, 500 * GiB, selected_node="n3"),)),
     THREE_POOLS, {}, ("n3",), {"n1": "being provisioned on node n3"}),
    ("bound-plus-pending-needs-copy-and-room",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv-a", frozenset({"n2", "n3"})),),
                pending=(PendingClaim(B, 25 * GiB),)),
     THREE_POOLS, {}, (), {"n1": "not on this node", "n2": "not enough",
                           "n3": "not enough"}),
]


@pytest.mark.parametrize(("pod", "pool_map", "reserved", "passed", "reasons"),
                         [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
def test_filter(pod, pool_map, reserved, passed, reasons) -> None:
    out = filter_nodes(pod, NODES, pool_map, reserved)
    assert out.passed == passed
    assert set(out.unresolvable) == set(NODES) - set(passed)
    for node_name, fragment in reasons.items():
        assert fragment in out.unresolvable[node_name]


SCORE_CASES = [
    ("no-claims-all-zero", PodVolumes("ns/p"), THREE_POOLS, [0, 0, 0]),
    ("primary-copy-scores-ten",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv", frozenset(NODES), "n2"),)),
     THREE_POOLS, [7, 10, 4]),
    ("replica-nodes-score-headroom-never-ten",
     PodVolumes("ns/p", bound=(BoundVolume(A, "pv", frozenset(NODES), "n2"),)),
     pools(("n1", "p", 10_000, 0), ("n2", "p", 1, 1), ("n3", "p", 1, 1)), [9, 10, 0]),
    ("headroom-after-the-pods-claims",
     PodVolumes("ns/p", pending=(PendingClaim(A, 4 * GiB),)),
     THREE_POOLS, [7, 5, 3]),
    ("nodes-that-do-not-fit-score-zero",
     PodVolumes("ns/p", pending=(PendingClaim(A, 50 * GiB),)),
     THREE_POOLS, [6, 0, 0]),
]


@pytest.mark.parametrize(("pod", "pool_map", "expected"), [c[1:] for c in SCORE_CASES],
                         ids=[c[0] for c in SCORE_CASES])
def test_score(pod, pool_map, expected) -> None:
    scores = score_nodes(pod, NODES, pool_map, {})
    assert [s.node for s in scores] == list(NODES)
    assert [s.score for s in scores] == expected
    assert all(0 <= s.score <= 10 for s in scores)


@pytest.mark.parametrize(("headroom", "score"), [
    (0, 0), (GiB - 1, 0), (GiB, 1), (2 * GiB, 2), (3 * GiB, 2), (4 * GiB, 3),
    (255 * GiB, 8), (256 * GiB, 9), (10**15, 9), (-5 * GiB, 0)])
def test_headroom_score_is_log2_and_capped_below_ten(headroom: int, score: int) -> None:
    assert headroom_score(headroom) == score


def test_ties_are_broken_by_headroom_then_name() -> None:
    scores = [NodeScore("b", 5, 20), NodeScore("a", 5, 20), NodeScore("c", 5, 30),
              NodeScore("z", 9, 0, fits=False)]
    assert best_node(scores) == "c"
    assert best_node(scores[:2]) == "a"
    assert best_node(scores[:2][::-1]) == "a"
    assert best_node([NodeScore("z", 0, 0, fits=False)]) is None


def test_same_input_same_decision() -> None:
    pod = PodVolumes("ns/p", pending=(PendingClaim(A, 4 * GiB), PendingClaim(B, 4 * GiB)))
    flat = pools(*((f"n{i}", "p", 100, 0) for i in range(50)))
    nodes = [f"n{i}" for i in range(50)]
    first = score_nodes(pod, nodes, flat, {})
    assert all(score_nodes(pod, nodes, flat, {}) == first for _ in range(3))
    assert best_node(first) == "n0"


def test_place_puts_largest_claim_first_in_roomiest_pool() -> None:
    node_pools = pools(("n1", "x", 10, 0), ("n1", "y", 12, 0))["n1"]
    got = place([PendingClaim(A, 3 * GiB), PendingClaim(B, 9 * GiB)], node_pools, {})
    assert got == (("x", 3 * GiB), ("y", 9 * GiB))


def test_place_skips_claims_already_being_provisioned() -> None:
    node_pools = pools(("n1", "x", 1, 0))["n1"]
    got = place([PendingClaim(A, 3 * GiB, selected_node="n1"), PendingClaim(B, MiB)],
                node_pools, {})
    assert got == (("x", MiB),)


@pytest.mark.parametrize(("scores", "expected"), [
    ([("a", 5, 10), ("b", 5, 20), ("c", 3, 30)], [4, 5, 3]),
    ([("a", 0, 1), ("b", 0, 1)], [1, 0]),
    ([("a", 7, 1), ("b", 5, 1)], [7, 5]),
    ([("a", 9, 5), ("b", 9, 5), ("c", 9, 5)], [9, 8, 8]),
])
def test_unique_top_leaves_one_node_with_the_top_score(scores, expected) -> None:
    got = unique_top([NodeScore(n, s, h) for n, s, h in scores])
    assert [s.score for s in got] == expected
    assert [s.node for s in got] == [n for n, _, _ in scores]


_claims = st.lists(st.tuples(st.integers(1, 64), st.sampled_from([None, None, "x", "y"]),
                             st.sampled_from([None, None, None, "n1"])),
                   min_size=0, max_size=4)
_pools = st.lists(st.tuples(st.sampled_from(["n0", "n1", "n2", "n3"]), st.sampled_from(["x", "y"]),
                            st.integers(0, 128), st.integers(0, 128),
                            st.sampled_from([1.0, 1.5, 2.0])), max_size=8)


@settings(max_examples=300, deadline=None)
@given(claims=_claims, pool_specs=_pools, bound=st.booleans(),
       reserve=st.dictionaries(st.sampled_from([("n0", "x"), ("n1", "y"), ("n2", "x")]),
                               st.integers(0, 64 * GiB)))
def test_filter_fast_path_agrees_with_judge_node(claims, pool_specs, bound, reserve) -> None:
    pending = tuple(PendingClaim(ClaimKey("d", f"c{i}"), size * GiB, pool, sel)
                    for i, (size, pool, sel) in enumerate(claims))
    vols = (BoundVolume(A, "pv", frozenset({"n1", "n2"}), "n1"),) if bound else ()
    pod = PodVolumes("d/p", vols, pending)
    by_node: dict[str, dict[str, PoolState]] = {}
    for node, name, cap, used, ratio in pool_specs:
        by_node.setdefault(node, {})[name] = PoolState(node, name, cap * GiB, used * GiB, ratio)
    pool_map = {n: tuple(v[k] for k in sorted(v)) for n, v in by_node.items()}
    nodes = ["n0", "n1", "n2", "n3", "n4"]
    out = filter_nodes(pod, nodes, pool_map, reserve)
    if not pod.concerns_us:
        assert out.passed == tuple(nodes)
        return
    for n in nodes:
        assert out.verdicts[n] == judge_node(pod, n, pool_map.get(n), reserve), n


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 10), st.integers(0, 3),
                          st.booleans()), max_size=8, unique_by=lambda t: t[0]))
def test_best_node_is_top_score_then_headroom_then_name(rows) -> None:
    scores = [NodeScore(n, s, h, f) for n, s, h, f in rows]
    fitting = [s for s in scores if s.fits]
    expected = min(fitting, key=lambda s: (-s.score, -s.headroom, s.node)).node if fitting else None
    assert best_node(scores) == expected
    top = unique_top(scores)
    if expected is not None:
        best_score = next(s.score for s in top if s.node == expected)
        assert all(s.score < best_score for s in top if s.node != expected and s.fits)
