"""Placement decisions of the scheduler extender: pure functions over frozen values.

Nothing here does I/O, reads a clock or knows about HTTP or Kubernetes objects: the
service resolves a pod's claims into :class:`PodVolumes`, gathers the pools of the
candidate nodes and the ledger's reservations, and asks :func:`filter_nodes` and
:func:`score_nodes`. Every decision is deterministic for the same input, so the filter
and the score the scheduler sees, and the node the ledger reserves on, always agree.

Why every refusal is *unresolvable*: kube-scheduler calls preemption only for nodes where
removing pods could help. Evicting pods frees no pool space and moves no data, so a node
without a copy or without room is never a preemption candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

MIN_SCORE = 0
MAX_SCORE = 10
"""``MinExtenderPriority`` / ``MaxExtenderPriority`` of kube-scheduler's extender/v1 API."""

HEADROOM_MAX_SCORE = MAX_SCORE - 1
"""Capacity headroom never reaches 10: the top score belongs to the primary copy's node."""

GiB = 1 << 30
MiB = 1 << 20

Placement = tuple[tuple[str, int], ...]
"""Bytes to take from each pool of one node: ``((pool, bytes), ...)``, sorted by pool."""

PoolKey = tuple[str, str]
"""``(node, pool)``: how reservations are indexed."""


@dataclass(frozen=True, slots=True)
class ClaimKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class BoundVolume:
    """A claim already bound to a node-local Statehold volume."""

    claim: ClaimKey
    volume: str
    nodes: frozenset[str]
    """Nodes that hold a copy (primary or replica); the pod can only run on one of them."""
    primary: str | None = None
    ranked: tuple[str, ...] = ()
    """A replicated volume whose primary's node is unavailable: the copy holders that can
    take over, newest acknowledged point first (``primary`` is then None)."""


@dataclass(frozen=True, slots=True)
class PendingClaim:
    """An unbound WaitForFirstConsumer claim: its volume is created where the pod lands."""

    claim: ClaimKey
    request: int
    """Bytes, already rounded up to what the pool really allocates (1 MiB)."""
    pool: str | None = None
    """The pool its StorageClass names, or None for any pool of the node."""
    selected_node: str | None = None
    """Set once the scheduler chose a node and provisioning started there."""


@dataclass(frozen=True, slots=True)
class PodVolumes:
    """What the extender needs to know about one pod's storage."""

    pod: str
    bound: tuple[BoundVolume, ...] = ()
    pending: tuple[PendingClaim, ...] = ()
    problems: tuple[str, ...] = ()
    """Claims that could not be resolved (unknown PVC, missing PV): every node fails."""

    @property
    def concerns_us(self) -> bool:
        return bool(self.bound or self.pending or self.problems)

    @property
    def needs_capacity(self) -> bool:
        return any(c.selected_node is None for c in self.pending)


@dataclass(frozen=True, slots=True)
class PoolState:
    """One pool of one node as its StoragePool status reports it."""

    node: str
    name: str
    capacity: int
    allocated: int
    """Bytes already promised to volumes (the sum of their sizes: StoragePool
    ``status.provisioned``), which is what the thin-provisioning limit counts."""
    overprovision: float = 1.0
    """Thin provisioning ratio: the pool may promise ``capacity * overprovision`` bytes."""
    limit: int = field(init=False, repr=False, compare=False)
    """``capacity * overprovision``, computed once: it is read for every node of every
    request."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit", int(self.capacity * self.overprovision))

    def free(self, reserved: int = 0) -> int:
        return self.limit - self.allocated - reserved


class NodeVerdict(NamedTuple):
    """One node's filter verdict. A NamedTuple, not a frozen dataclass like the other
    values: one is built per node per request, and a frozen dataclass costs five times
    as much to build (1,000 nodes: milliseconds of a 20 ms budget)."""

    node: str
    ok: bool
    reason: str = ""
    placement: Placement = ()
    headroom: int = 0
    """Bytes left after placing the pod's claims (tightest pool used), or the node's
    largest free pool when the pod needs no new space."""


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    passed: tuple[str, ...]
    unresolvable: Mapping[str, str]
    verdicts: Mapping[str, NodeVerdict]


class NodeScore(NamedTuple):
    """One node's score (a NamedTuple for the same reason as :class:`NodeVerdict`)."""

    node: str
    score: int
    headroom: int
    fits: bool = True
    """False when the node cannot take the pod (it then scores 0)."""


def human(n: int) -> str:
    """Bytes for a reason string: ``12.0GiB``."""
    if abs(n) >= GiB:
        return f"{n / GiB:.1f}GiB"
    return f"{n / MiB:.1f}MiB"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a pod asks of every node, worked out once per request, not once per node."""

    todo: tuple[PendingClaim, ...]
    """Claims that still need space, largest first (ties by name)."""
    total: int
    any_pool: bool
    """True when no claim names a pool: a one-pool node then needs only one comparison."""

    @classmethod
    def of(cls, pending: Sequence[PendingClaim]) -> Plan:
        todo = tuple(sorted((c for c in pending if c.selected_node is None),
                            key=lambda c: (-c.request, str(c.claim))))
        return cls(todo, sum(c.request for c in todo), all(c.pool is None for c in todo))


def place(pending: Sequence[PendingClaim] | Plan, pools: Sequence[PoolState],
          reserved: Mapping[PoolKey, int]) -> Placement | str:
    """Assign each claim that still needs space to one pool of the node.

    Largest claim first, each into the pool with the most room left (worst fit; the
    alphabetically first pool among equals): it keeps the node's headroom even and is
    exact for the common one-pool node, where it reduces to "the sum of the requests
    fits". Returns the placement or the reason it fails.
    """
    plan = pending if isinstance(pending, Plan) else Plan.of(pending)
    if plan.any_pool and len(pools) == 1:
        only = pools[0]
        if only.free(reserved.get((only.node, only.name), 0)) >= plan.total:
            return ((only.name, plan.total),) if plan.total else ()
    room = {p.name: p.free(reserved.get((p.node, p.name), 0)) for p in pools}
    ordered = sorted(room)
    take: dict[str, int] = {}
    for claim in plan.todo:
        names = ordered if claim.pool is None else [n for n in (claim.pool,) if n in room]
        if not names:
            if claim.pool is not None:
                return f"claim {claim.claim} needs pool {claim.pool!r}, which this node lacks"
            return "no Statehold pool on this node"
        best = max(names, key=room.__getitem__)
        if room[best] < claim.request:
            total = (f"the pod's new claims need {human(plan.total)} in total; "
                     if len(plan.todo) > 1 else "")
            return (f"not enough free space: {total}claim {claim.claim} "
                    f"({human(claim.request)}) does not fit, pool {best} has "
                    f"{human(max(room[best], 0))} free after reservations")
        room[best] -= claim.request
        take[best] = take.get(best, 0) + claim.request
    return tuple(sorted(take.items()))


def judge_node(pod: PodVolumes, node: str, pools: Sequence[PoolState] | None,
               reserved: Mapping[PoolKey, int], plan: Plan | None = None) -> NodeVerdict:
    """Can the pod's storage live on node? Pure; see :func:`filter_nodes`."""
    if pod.problems:
        return NodeVerdict(node, False, "; ".join(pod.problems))
    for vol in pod.bound:
        if node not in vol.nodes:
            where = ", ".join(sorted(vol.nodes)) or "no node"
            return NodeVerdict(node, False, f"claim {vol.claim} is bound to local volume "
                               f"{vol.volume}, whose data is on {where}, not on this node")
    for claim in pod.pending:
        if claim.selected_node is not None and claim.selected_node != node:
            return NodeVerdict(node, False, f"claim {claim.claim} is being provisioned on "
                               f"node {claim.selected_node}")
    plan = plan or Plan.of(pod.pending)
    if not plan.todo:
        return NodeVerdict(node, True, headroom=_largest_free(pools, reserved))
    if pools is None:
        return NodeVerdict(node, False, "no capacity data for this node (no StoragePool "
                           "status reported)")
    placed = place(plan, pools, reserved)
    if isinstance(placed, str):
        return NodeVerdict(node, False, placed)
    if len(pools) == 1 and len(placed) == 1:
        p = pools[0]
        headroom = p.free(reserved.get((node, p.name), 0)) - placed[0][1]
    else:
        by_name = {p.name: p for p in pools}
        headroom = min(by_name[name].free(reserved.get((node, name), 0)) - used
                       for name, used in placed)
    return NodeVerdict(node, True, placement=placed, headroom=headroom)


def _largest_free(pools: Sequence[PoolState] | None, reserved: Mapping[PoolKey, int]) -> int:
    if not pools:
        return 0
    return max(p.free(reserved.get((p.node, p.name), 0)) for p in pools)


def filter_nodes(pod: PodVolumes, nodes: Sequence[str],
                 pools: Mapping[str, Sequence[PoolState]],
                 reserved: Mapping[PoolKey, int]) -> FilterOutcome:
    """Keep the nodes where the pod's Statehold volumes can be used.

    * a bound local volume: only nodes holding a copy of it;
    * an unbound WaitForFirstConsumer claim: only nodes whose pools have room for all of
      the pod's new claims together, after the over-provisioning ratio and after the
      capacity other pods have reserved (``reserved``, excluding this pod's own);
    * a pod without Statehold claims: every node, untouched.

    ``pools`` maps a node to its pools; a node missing from it has no capacity data.
    """
    if not pod.concerns_us:
        return FilterOutcome(tuple(nodes), {}, {})
    plan = Plan.of(pod.pending)
    if _simple(pod, plan):
        verdicts = _judge_simple(pod, nodes, pools, reserved, plan)
    else:
        verdicts = {n: judge_node(pod, n, pools.get(n), reserved, plan) for n in nodes}
    passed = tuple(n for n in nodes if verdicts[n].ok)
    failed = {n: v.reason for n, v in verdicts.items() if not v.ok}
    return FilterOutcome(passed, failed, verdicts)


def _simple(pod: PodVolumes, plan: Plan) -> bool:
    """The common case: only new claims, none tied to a pool or a node already."""
    return (bool(plan.todo) and plan.any_pool and not pod.problems and not pod.bound
            and len(plan.todo) == len(pod.pending))


def _judge_simple(pod: PodVolumes, nodes: Sequence[str],
                  pools: Mapping[str, Sequence[PoolState]],
                  reserved: Mapping[PoolKey, int], plan: Plan) -> dict[str, NodeVerdict]:
    """:func:`judge_node` for every node, with the one-pool node inlined (one comparison
    instead of a placement): the filter's cost over 1,000 nodes is this loop. Any other
    node, and every refusal (for its reason), goes through :func:`judge_node`; the result
    is the same, as a property test checks."""
    total = plan.total
    out: dict[str, NodeVerdict] = {}
    for n in nodes:
        ps = pools.get(n)
        if ps is not None and len(ps) == 1:
            p = ps[0]
            free = p.limit - p.allocated - reserved.get((n, p.name), 0)
            if free >= total:
                out[n] = NodeVerdict(n, True, "", ((p.name, total),), free - total)
                continue
        out[n] = judge_node(pod, n, ps, reserved, plan)
    return out


def headroom_score(headroom: int) -> int:
    """Free bytes on a log scale: <1 GiB → 0, 1 GiB → 1, 2 GiB → 2, 4 GiB → 3, ...,
    ≥256 GiB → 9 (never 10)."""
    if headroom < GiB:
        return MIN_SCORE
    # floor(log2(x)) + 1 == bit_length(floor(x)) for x >= 1, without floating point
    bits = (headroom // GiB).bit_length()
    return bits if bits < HEADROOM_MAX_SCORE else HEADROOM_MAX_SCORE


def score_nodes(pod: PodVolumes, nodes: Sequence[str],
                pools: Mapping[str, Sequence[PoolState]],
                reserved: Mapping[PoolKey, int]) -> tuple[NodeScore, ...]:
    """Score each node 0..10, in the order given.

    The node holding the primary copy of every bound volume scores 10. When a replicated
    volume's primary is unavailable, its copy holders score 10, 9, ... by newest
    acknowledged point instead. Any other node scores its capacity headroom on a log scale
    (at most 9); a node that cannot take the pod scores 0. A pod without Statehold claims
    scores 0 everywhere, which leaves the other plugins' ranking alone.
    """
    if not pod.concerns_us:
        return tuple(NodeScore(n, MIN_SCORE, 0) for n in nodes)
    plan = Plan.of(pod.pending)
    preferred = preferred_scores(pod)
    return tuple(score_verdict(pod, judge_node(pod, n, pools.get(n), reserved, plan), preferred)
                 for n in nodes)


def primary_node(pod: PodVolumes) -> str | None:
    """The node holding the primary copy of every bound volume, if one node does."""
    primaries = {v.primary for v in pod.bound if v.primary is not None}
    return primaries.pop() if len(primaries) == 1 else None


def preferred_scores(pod: PodVolumes) -> dict[str, int]:
    """Nodes the pod's data prefers, with their score: the primary's node 10; else, for
    the one bound volume whose primary is unavailable, its ranked copy holders 10, 9, ...
    (at least 1). Empty when nothing is preferred."""
    primary = primary_node(pod)
    if primary is not None:
        return {primary: MAX_SCORE}
    rankings = {v.ranked for v in pod.bound if v.ranked}
    if len(rankings) != 1:
        return {}
    (ranked,) = rankings
    return {n: max(1, MAX_SCORE - i) for i, n in enumerate(ranked)}


def score_verdict(pod: PodVolumes, verdict: NodeVerdict,
                  preferred: Mapping[str, int] | None = None) -> NodeScore:
    """The score of one judged node (see :func:`score_nodes`); pass ``preferred`` (from
    :func:`preferred_scores`) when scoring many nodes."""
    node, ok, _, _, headroom = verdict
    if not ok:
        return NodeScore(node, MIN_SCORE, 0, False)
    if preferred is None:
        preferred = preferred_scores(pod) if pod.bound else {}
    if node in preferred:
        return NodeScore(node, preferred[node], headroom)
    if headroom < GiB:
        return NodeScore(node, MIN_SCORE, headroom)
    bits = (headroom // GiB).bit_length()  # = headroom_score(headroom), inlined: hot loop
    return NodeScore(node, bits if bits < HEADROOM_MAX_SCORE else HEADROOM_MAX_SCORE, headroom)


def best_node(scores: Sequence[NodeScore]) -> str | None:
    """The node a reservation goes to: highest score, then most headroom, then the
    alphabetically first name, so ties are broken the same way on every call."""
    top = -1
    for s in scores:  # three plain passes: no key tuple per node (a hot path)
        if s.fits and s.score > top:
            top = s.score
    if top < 0:
        return None
    tied = [s for s in scores if s.fits and s.score == top]
    room = max(s.headroom for s in tied)
    return min(s.node for s in tied if s.headroom == room)


def unique_top(scores: Sequence[NodeScore], best: str | None = None) -> tuple[NodeScore, ...]:
    """Make :func:`best_node` (pass it as ``best`` if known) the only node with the top
    score.

    kube-scheduler picks at random among nodes with equal totals; the ledger reserved on
    :func:`best_node`, so an equal score elsewhere would let the scheduler pick a node the
    ledger did not reserve on. Nodes tied with it drop one point (it rises to 1 when the
    tie is at 0).
    """
    best = best if best is not None else best_node(scores)
    if best is None:
        return tuple(scores)
    top = next(s.score for s in scores if s.node == best)
    if top == MIN_SCORE:
        return tuple(NodeScore(s.node, 1, s.headroom) if s.node == best else s for s in scores)
    lower = top - 1
    return tuple(NodeScore(s.node, lower, s.headroom) if s.score == top and s.fits
                 and s.node != best else s for s in scores)


def best_verdict(pod: PodVolumes, verdicts: Mapping[str, NodeVerdict],
                 nodes: Sequence[str]) -> str | None:
    """:func:`best_node` straight from verdicts, without building scores: the score is
    the preferred score on the nodes the data prefers (10 on the primary's node) and grows
    with headroom elsewhere, so the order is the same."""
    fitting = [n for n in nodes if verdicts[n].ok]
    if not fitting:
        return None
    preferred = preferred_scores(pod)
    chosen = [n for n in fitting if n in preferred]
    if chosen:
        return min(chosen, key=lambda n: (-preferred[n], -verdicts[n].headroom, n))
    return min(fitting, key=lambda n: (-verdicts[n].headroom, n))
