"""Decisions for replicated volumes (docs/design/replication.md §8-§9): pure functions over
frozen values, no I/O, no clock.

* :func:`place_copies` — where new copies go: nodes with a Ready, non-retiring pool that
  has room, most free first, spread across ``topology.kubernetes.io/zone``.
* :func:`choose_failover` — which copy to promote: the newest acknowledged point by
  ``(epoch, seq)``; a replica before a stale copy, never a seeding one.
* :func:`plan_failover` — whether to fail over now: only when the primary's Node is
  NotReady *and* tainted out-of-service, or ``spec.promote`` names a node.
* :func:`stage_decision` — the stage-time rule table of §9 as a function.

  These three, the record (:class:`Record`, :class:`CopyInfo`) and the outcomes live in
  :mod:`statehold.replication.cluster`, below the adapters, because the CSI node plugin
  applies the same table at NodeStage; they are re-exported here.
* :func:`plan_copies` — what a volume's copies need: new ones placed, a retiring
  primary moved, retiring or surplus copies released once others acknowledged.
* :func:`plan_cordon` — a planned move started because the primary's Node was cordoned
  (or is being drained), and its cancellation once the node is schedulable again.
* :func:`plan_reclaim` — whether a replicated PV is reclaimed by the operator (Released,
  reclaim policy Delete) and in which order its copies go (§8.1).

The reconciler (:mod:`statehold.controller.replication`) reads the cluster, asks these,
and acts through the Kube facade and the ``Agents`` port.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from statehold.kube.nodes import NodeHealth
from statehold.replication.cluster import (
    SERVING_ROLES,
    CopyInfo,
    Decision,
    Failover,
    Move,
    Record,
    Refuse,
    Stage,
    choose_failover,
    newest_copy,
    plan_failover,
    point_key,
    primary_state,
    stage_decision,
)

__all__ = [
    "SERVING_ROLES", "CancelMove", "CopyInfo", "CopyPlan", "CordonMove", "Decision", "Failover",
    "Move", "Placement", "PoolRoom", "Reclaim", "Record", "Refuse", "Stage", "choose_failover",
    "deduct", "newest_copy", "place_copies", "plan_copies", "plan_cordon", "plan_failover",
    "plan_reclaim", "point_key", "primary_state", "stage_decision",
]


# -- placement -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PoolRoom:
    """One StoragePool as placement sees it."""

    node: str
    pool: str
    free: int                     # bytes that may still be provisioned (status.allocatable)
    ready: bool = True
    retiring: bool = False        # spec.decommission


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    pool: str


def _human(n: int) -> str:
    gib = 1 << 30
    return f"{n / gib:.1f}GiB" if n >= gib else f"{n / (1 << 20):.1f}MiB"


def _why_not(pools: Sequence[PoolRoom], health: Mapping[str, NodeHealth], size: int,
             taken: Collection[str]) -> list[str]:
    reasons = []
    for node in sorted({p.node for p in pools} - set(taken)):
        h = health.get(node)
        mine = [p for p in pools if p.node == node]
        if h is None:
            reasons.append(f"{node}: no Node object")
        elif not h.available:
            reasons.append(f"{node}: not ready")
        elif h.unschedulable:
            reasons.append(f"{node}: cordoned")
        elif not any(p.ready and not p.retiring for p in mine):
            reasons.append(f"{node}: no Ready pool that is not retiring")
        else:
            best = max(p.free for p in mine if p.ready and not p.retiring)
            reasons.append(f"{node}: {_human(max(best, 0))} free, {_human(size)} needed")
    return reasons


def place_copies(count: int, size: int, pools: Sequence[PoolRoom],
                 health: Mapping[str, NodeHealth],
                 taken: Collection[str] = ()) -> tuple[Placement, ...] | Refuse:
    """``count`` new copies of ``size`` bytes, each on its own node, none on ``taken``
    (the nodes that already hold a copy).

    A node qualifies when its Node is ready, schedulable and known, and one of its pools
    is Ready, not retiring, and has ``size`` bytes free; its roomiest such pool is used.
    Copies go first to the zone holding the fewest copies so far (``taken`` counted; a node
    without a zone label is a zone of its own), then to the node with the most room, then
    by name. ``InsufficientCapacity`` when fewer than ``count`` nodes qualify.
    """
    if count <= 0:
        return ()
    best: dict[str, PoolRoom] = {}
    for p in sorted(pools, key=lambda p: (p.node, -p.free, p.pool)):  # roomiest pool first
        h = health.get(p.node)
        if (p.node in best or p.node in taken or h is None or not h.available
                or h.unschedulable or not p.ready or p.retiring or p.free < size):
            continue
        best[p.node] = p
    if len(best) < count:
        why = "; ".join(_why_not(pools, health, size, taken)) or "no StoragePool reports capacity"
        return Refuse("InsufficientCapacity",
                      f"{count} new copies of {_human(size)} need {count} more nodes with room "
                      f"(besides {', '.join(sorted(taken)) or 'none'}); {len(best)} qualify: {why}")

    def zone(node: str) -> str:
        h = health.get(node)
        return h.zone if h is not None and h.zone else f"node:{node}"

    per_zone: dict[str, int] = {}
    for node in taken:
        per_zone[zone(node)] = per_zone.get(zone(node), 0) + 1
    chosen: list[Placement] = []
    left = dict(best)
    for _ in range(count):
        node = min(left, key=lambda n: (per_zone.get(zone(n), 0), -left[n].free, n))
        chosen.append(Placement(node, left.pop(node).pool))
        per_zone[zone(node)] = per_zone.get(zone(node), 0) + 1
    return tuple(chosen)


def deduct(pools: Sequence[PoolRoom], placed: Iterable[Placement], size: int) -> list[PoolRoom]:
    """``pools`` after ``placed`` each took ``size`` bytes (to place the next volume)."""
    taken: dict[tuple[str, str], int] = {}
    for p in placed:
        taken[(p.node, p.pool)] = taken.get((p.node, p.pool), 0) + size
    return [replace(p, free=p.free - taken.get((p.node, p.pool), 0)) for p in pools]


# -- copies over time (placement, retirement) ----------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyPlan:
    """What one volume's copies need now."""

    add: tuple[Placement, ...] = ()
    release: tuple[str, ...] = ()     # nodes whose copy goes
    move_to: str | None = None        # a planned move of the primary (retirement)
    refuse: Refuse | None = None
    retiring: tuple[str, ...] = ()    # nodes whose copy sits in a retiring pool


def _servable(c: CopyInfo, record: Record) -> bool:
    return (c.point is not None and c.role in SERVING_ROLES) or c.node == record.primary


def plan_copies(record: Record, pools: Sequence[PoolRoom], health: Mapping[str, NodeHealth],
                retiring: Collection[tuple[str, str]] = ()) -> CopyPlan:
    """Keep ``record.replicas`` copies outside retiring pools (§9.7).

    * Too few copies outside retiring pools: place new ones (InsufficientCapacity when the
      other nodes lack room; nothing is released then).
    * The primary in a retiring pool: move it to the newest acknowledged replica outside
      (once one exists; a new copy seeds first).
    * A copy in a retiring pool that is not the primary: released once enough copies
      outside retiring pools hold an acknowledged point.
    """
    out = set(retiring)
    leaving = tuple(c.node for c in record.copies if (c.node, c.pool) in out)
    staying = [c for c in record.copies if (c.node, c.pool) not in out]
    if record.primary not in {c.node for c in record.copies} and record.primary not in leaving:
        staying.append(CopyInfo(record.primary, "primary"))
    missing = record.replicas - len(staying)
    add: tuple[Placement, ...] = ()
    refuse = None
    if missing > 0:
        placed = place_copies(missing, record.size, pools, health,
                              taken={c.node for c in record.copies} | {record.primary})
        if isinstance(placed, Refuse):
            refuse = placed
        else:
            add = placed
    move_to = None
    if record.primary in leaving and record.moving is None:
        ready = [c for c in staying if c.reachable and c.role == "replica" and c.point]
        if ready:
            move_to = newest_copy(ready).node
    serving = [c for c in staying if _servable(c, record)]
    release: tuple[str, ...] = ()
    if refuse is None and len(serving) >= record.replicas:
        release = tuple(sorted(n for n in leaving if n != record.primary))
    return CopyPlan(add, release, move_to, refuse, leaving)


# -- moves started by a cordon or a drain (§9.5) --------------------------------------------

@dataclass(frozen=True, slots=True)
class CordonMove:
    """Move the primary to ``to`` (or go on moving it there): its Node is cordoned."""

    to: str


@dataclass(frozen=True, slots=True)
class CancelMove:
    """The move to ``to`` under way has no reason left (its node was uncordoned, the
    request was withdrawn, or moves on cordon were turned off): cancel it while the volume
    is still staged on the primary; once it is unstaged the pod has left, and the move
    finishes instead (the pod is rescheduled elsewhere, most likely onto ``to``)."""

    to: str
    why: str


def plan_cordon(record: Record, health: Mapping[str, NodeHealth], *,
                enabled: bool) -> CordonMove | CancelMove | Refuse | None:
    """A planned move because the primary's Node is unschedulable (§9.5).

    Only a cordon records ``status.moving`` without ``spec.move``, so a move recorded
    without a request is a cordon's (or one whose request was withdrawn).

    =====================================================  ==================================
    the record, the primary's Node                         decision
    =====================================================  ==================================
    ``spec.promote`` or ``spec.move`` set                  None (the request goes first)
    moving, no ``spec.move``; Node cordoned, enabled       CordonMove(moving.to): go on
    moving, no ``spec.move``; otherwise                    CancelMove(moving.to)
    not moving; Node not Ready, unknown or schedulable     None (a NotReady node is failover's)
    not moving; Node cordoned, disabled                    None
    not moving; Node cordoned                              CordonMove(best replica) or Refuse
    =====================================================  ==================================

    The best replica: reachable, holding an acknowledged point, on a Node that is Ready,
    in service and schedulable (the pod must be able to follow); the newest point, ties
    by node name. None qualifies: Refuse ``NoMoveTarget`` (the primary stays; nothing is
    lost, the pod just cannot leave).
    """
    if record.promote is not None or record.move is not None:
        return None
    h = health.get(record.primary)
    cordoned = h is not None and h.available and h.unschedulable
    if record.moving is not None:
        if cordoned and enabled:
            return CordonMove(record.moving)
        why = ("moves on cordon are turned off" if cordoned else
               f"node {record.primary} is schedulable again" if h is not None and h.available
               else "the move was not asked for")
        return CancelMove(record.moving, why)
    if not cordoned or not enabled:
        return None
    fit = []
    for c in record.copies:
        t = health.get(c.node)
        if (c.node != record.primary and c.reachable and c.role == "replica" and c.point
                and t is not None and t.available and not t.unschedulable):
            fit.append(c)
    if not fit:
        return Refuse("NoMoveTarget", f"node {record.primary} is cordoned, but no other copy "
                      "holds an acknowledged point on a Ready, schedulable node: the primary "
                      "stays (the volume's pod cannot leave the node until one does)")
    return CordonMove(newest_copy(fit).node)


# -- reclaiming a deleted volume's copies (§8.1) -------------------------------------------

@dataclass(frozen=True, slots=True)
class Reclaim:
    """Delete the replicated volume: ``order`` are the nodes whose copy goes, the primary's
    first (whole: volume, state, point snapshots, work file); ``unlabel`` the nodes that
    carry the copy label; then the PV object (finalizer first) and the record."""

    order: tuple[str, ...]
    unlabel: tuple[str, ...]


def plan_reclaim(*, phase: str, policy: str, primary: str, copies: Iterable[str],
                 labelled: Iterable[str], nodes: Collection[str]) -> Reclaim | None:
    """Whether the operator reclaims a replicated PV now, and how (§8.1).

    external-provisioner in node-deployment mode deletes a PV only from a node whose
    topology its affinity admits; a replicated PV's affinity names the per-volume copy
    label, which no node's CSI topology carries, so nobody would ever call DeleteVolume.

    ===========================================  =============================================
    the PV                                       decision
    ===========================================  =============================================
    reclaim policy Retain, Recycle or unset      None: never touched (unset reads as Retain,
                                                 the API server's default for a PV)
    policy Delete, phase Bound, Available,       None: still somebody's, or not yet released
    Pending, Failed or unknown
    policy Delete, phase Released                Reclaim: the copies of every node that still
                                                 has a Node (``nodes``) and is recorded,
                                                 labelled or the primary: the primary first,
                                                 the others by name; every labelled node
                                                 unlabelled
    ===========================================  =============================================

    A node without a Node object took its copy with it; a repeat after a crash finds
    fewer copies (a copy gone is done) and the same order.
    """
    if policy != "Delete" or phase != "Released":
        return None
    labels = set(labelled) & set(nodes)
    holders = ({n for n in copies if n} | labels | ({primary} if primary else set())) & set(nodes)
    first = (primary,) if primary in holders else ()
    order = first + tuple(sorted(holders - {primary}))
    return Reclaim(order, tuple(sorted(labels)))
