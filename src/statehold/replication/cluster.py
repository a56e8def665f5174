"""The cluster's view of a replicated volume, as pure values (docs/design/replication.md
§8-§9): what the controller, the CSI node plugin and the agent share without importing
each other.

* :class:`CopyReport`, :class:`CopyTarget` — the data of the controller's ``Agents`` port
  (``statehold.controller.replicas``): an agent's report of its copy, a replica a primary
  streams to. The agent's gRPC implementation of the port builds them.
* :class:`Record` and :func:`record_of` — the decision inputs of a ``ReplicatedVolume``
  object (its JSON), read the same way by the reconciler and by NodeStage.
* :func:`choose_failover`, :func:`plan_failover`, :func:`primary_state` and
  :func:`stage_decision` — the failover rules and the stage-time rule table of §9.

Node health is taken structurally (:class:`Health`: ``available``, ``fenced``), so this
module needs nothing from the Kubernetes adapter; ``statehold.kube.nodes.NodeHealth`` is
what callers pass. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from statehold.errors import InvalidArgument
from statehold.replication.points import parse_point

ROLES = ("primary", "replica", "seeding", "stale")
"""Roles a copy reports (replication.md §2)."""

SERVING_ROLES = ("primary", "replica")
"""Roles whose copy holds an acknowledged, consistent image and may serve after a promote."""


# -- the Agents port's data ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyReport:
    """One node's copy of a volume, as its agent reports it."""

    node: str
    pool: str
    role: str                         # one of ROLES
    epoch: int
    point: str | None = None          # newest acknowledged point (e<epoch>-<seq>)
    point_time: float | None = None   # unix time that point was taken
    lag_seconds: float | None = None  # the age of that point, when the agent knows it
    resume_offset: int = 0            # bytes of an interrupted seed already on disk


@dataclass(frozen=True, slots=True)
class CopyTarget:
    """A replica a primary streams to."""

    node: str
    pool: str


# -- the record ----------------------------------------------------------------------------

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


def record_of(rv: Mapping[str, Any]) -> Record:
    """The decision inputs of a ReplicatedVolume object (copies as last recorded)."""
    spec, st = rv.get("spec") or {}, rv.get("status") or {}
    copies = tuple(CopyInfo(c["node"], c.get("role", "unknown"), c.get("point"), c.get("pool", ""),
                            reachable=c.get("state") != "Unreachable")
                   for c in st.get("copies") or [])
    return Record(volume=spec["volumeHandle"], epoch=int(st.get("epoch") or 0),
                  primary=str(st.get("primary") or ""), copies=copies,
                  replicas=int(spec.get("replicas", 1)), size=int(spec.get("size") or 0),
                  promote=(spec.get("promote") or {}).get("node"),
                  move=(spec.get("move") or {}).get("to"),
                  moving=(st.get("moving") or {}).get("to"))


class Health(Protocol):
    """What the rules read of a node's health (``statehold.kube.nodes.NodeHealth``)."""

    @property
    def available(self) -> bool:
        """The node can run the volume's pod now."""
        ...

    @property
    def fenced(self) -> bool:
        """Down, and declared off by an administrator: its copies cannot be writing."""
        ...


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


def plan_failover(record: Record, health: Mapping[str, Health]) -> Failover | Refuse | None:
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


def primary_state(record: Record, health: Mapping[str, Health]) -> str:
    """``available``, ``fenced`` (down and declared off) or ``unreachable`` (down, not
    fenced: it may still be writing)."""
    h = health.get(record.primary)
    if h is not None and h.available:
        return "available"
    if h is not None and h.fenced:
        return "fenced"
    return "unreachable"


# -- the stage-time rule table (§9) --------------------------------------------------------

def stage_decision(node: str, record: Record, health: Mapping[str, Health]) -> Decision:
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
