"""Decisions for replicated volumes (docs/design/replication.md §8-§9): pure functions over
frozen values, no I/O, no clock.

* :func:`place_copies` — where new copies go: nodes with a Ready, non-retiring pool that
  has room, most free first, spread across ``topology.kubernetes.io/zone``.
* :func:`choose_failover` — which copy to promote: the newest acknowledged point by
  ``(epoch, seq)``; a replica before a stale copy, never a seeding one.
* :func:`plan_failover` — whether to fail over now: only when the primary's Node is
  NotReady *and* tainted out-of-service, or ``spec.promote`` names a node.
* :func:`stage_decision` — the stage-time rule table of §9 as a function.
* :func:`plan_copies` — what a volume's copies need: new ones placed, a retiring
  primary moved, retiring or surplus copies released once others acknowledged.

The reconciler (:mod:`statehold.controller.replication`) reads the cluster, asks these,
and acts through the Kube facade and the ``Agents`` port.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from statehold.errors import InvalidArgument
from statehold.kube.nodes import NodeHealth
from statehold.replication.points import parse_point

SERVING_ROLES = ("primary", "replica")
"""Roles whose copy holds an acknowledged, consistent image and may serve after a promote."""


def point_key(point: str | None) -> tuple[int, int]:
    """Order of points: ``(epoch, seq)``; no point (or a malformed one) sorts first."""
    if not point:
        return (0, 0)
    try:
        return parse_point(point)
    except InvalidArgument:
        return (0, 0)


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """One copy of a volume as the controller knows it (from the record and the agents)."""

    node: str
    role: str = "replica"         # primary | replica | seeding | stale | unknown
    point: str | None = None      # newest acknowledged point
    pool: str = ""
    epoch: int = 0
    reachable: bool = True


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a ReplicatedVolume the decisions read."""

    volume: str                   # the volume handle
    epoch: int
    primary: str
    copies: tuple[CopyInfo, ...] = ()
    replicas: int = 1
    size: int = 0
    promote: str | None = None    # spec.promote.node
    move: str | None = None       # spec.move.to
    moving: str | None = None     # status.moving.to

    def copy_on(self, node: str) -> CopyInfo | None:
        return next((c for c in self.copies if c.node == node), None)


# -- outcomes ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stage:
    """Stage the volume on ``node``: it is the primary at the record's epoch."""

    node: str


@dataclass(frozen=True, slots=True)
class Move:
    """A planned move of the primary from ``source`` to ``to`` first (§9.5)."""

    source: str
    to: str


@dataclass(frozen=True, slots=True)
class Failover:
    """Record ``epoch``/``to`` by compare-and-set, then promote the copy on ``to`` (§9.4).
    ``then_move_to``: the stage was asked on another copy holder, which a planned move
    from the promoted copy serves afterwards."""

    to: str
    epoch: int
    point: str | None = None
    then_move_to: str | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str                   # CamelCase, for conditions and Events
    message: str


Decision = Stage | Move | Failover | Refuse


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


# -- failover ------------------------------------------------------------------------------

def newest_copy(copies: Iterable[CopyInfo]) -> CopyInfo:
    """The copy with the newest point; among equals the first node by name."""
    return max(sorted(copies, key=lambda c: c.node), key=lambda c: point_key(c.point))


def choose_failover(copies: Iterable[CopyInfo], *, exclude: str = "",
                    prefer: str | None = None) -> CopyInfo | Refuse:
    """The copy to promote: reachable, holding an acknowledged point, not on ``exclude``
    (the old primary). The newest point by ``(epoch, seq)`` among replicas (ties by node
    name); a stale copy only when no replica qualifies; a seeding copy never. With
    ``prefer`` (an explicit promote) that node's copy, if it qualifies at all."""
    pool = [c for c in copies if c.node != exclude]
    if prefer is not None:
        c = next((c for c in pool if c.node == prefer), None)
        if c is None:
            return Refuse("NoCopy", f"node {prefer} holds no copy of this volume")
        if not c.reachable:
            return Refuse("CopyUnreachable", f"the agent on {prefer} does not answer")
        if c.role not in ("replica", "stale", "primary") or c.point is None:
            return Refuse("CopyNotServable", f"the copy on {prefer} is {c.role} and holds no "
                          "acknowledged point: it cannot be promoted")
        return c
    for roles in (("replica",), ("stale",)):
        fit = [c for c in pool if c.reachable and c.role in roles and c.point is not None]
        if fit:
            return newest_copy(fit)
    return Refuse("NoCopyToPromote", "no reachable copy holds an acknowledged point "
                  "(seeding copies cannot serve); restore from a backup, or bring a copy "
                  "holder back")


def plan_failover(record: Record, health: Mapping[str, NodeHealth]) -> Failover | Refuse | None:
    """Fail over now? ``spec.promote`` naming another node than the primary, or the
    primary's Node NotReady *and* tainted out-of-service (fenced). None: nothing to do;
    Refuse: a failover is due but no copy qualifies."""
    if record.promote is not None and record.promote != record.primary:
        chosen = choose_failover(record.copies, prefer=record.promote)
    else:
        h = health.get(record.primary)
        if h is None or not h.fenced:
            return None
        chosen = choose_failover(record.copies, exclude=record.primary)
    if isinstance(chosen, Refuse):
        return chosen
    return Failover(chosen.node, record.epoch + 1, chosen.point)


def primary_state(record: Record, health: Mapping[str, NodeHealth]) -> str:
    """``available``, ``fenced`` (down and declared off) or ``unreachable`` (down, not
    fenced: it may still be writing)."""
    h = health.get(record.primary)
    if h is not None and h.available:
        return "available"
    if h is not None and h.fenced:
        return "fenced"
    return "unreachable"


# -- the stage-time rule table (§9) --------------------------------------------------------

def stage_decision(node: str, record: Record, health: Mapping[str, NodeHealth]) -> Decision:
    """What staging the volume on ``node`` needs first.

    ============================================  =========================================
    the copy on ``node``, the primary             decision
    ============================================  =========================================
    it is ``status.primary``, no move under way   Stage
    it is ``status.primary``, moving elsewhere    Refuse (MoveInProgress)
    replica; primary available                    Move primary -> node
    replica; primary fenced or promote asked      Failover (newest copy), then Stage on it
                                                  or Move to ``node``
    replica; primary down but not fenced          Refuse (PrimaryNotFenced): may be writing
    seeding or stale                              Refuse (CopyNotServable)
    none                                          Refuse (NoCopy)
    ============================================  =========================================
    """
    if node == record.primary:
        if record.moving is not None and record.moving != node:
            return Refuse("MoveInProgress", f"the primary is moving to {record.moving}; "
                          f"{node} does not stage it meanwhile")
        return Stage(node)
    mine = record.copy_on(node)
    if mine is None:
        return Refuse("NoCopy", f"node {node} holds no copy of {record.volume}")
    if mine.role != "replica" or mine.point is None:
        return Refuse("CopyNotServable", f"the copy on {node} is {mine.role} and cannot serve "
                      "until it is resynced")
    state = primary_state(record, health)
    if state == "available" and record.promote in (None, record.primary):
        return Move(record.primary, node)
    failover = plan_failover(record, health)
    if failover is None:
        return Refuse("PrimaryNotFenced", f"the primary's node {record.primary} is not ready "
                      "but not fenced: it may still be writing. Taint it "
                      "node.kubernetes.io/out-of-service once it is off, or promote a copy by "
                      "hand (kubectl statehold volume promote)")
    if isinstance(failover, Refuse):
        return failover
    return replace(failover, then_move_to=None if failover.to == node else node)


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
