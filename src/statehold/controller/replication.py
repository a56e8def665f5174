"""The ReplicatedVolume reconciler (docs/design/replication.md §8-§9): read the record and
the copies, ask :mod:`~statehold.controller.replication_policy`, act through the Kube
facade and the :class:`~statehold.controller.replicas.Agents` port.

One pass over one volume, level-triggered (every step is safe to repeat):

1. the record gets ``status.epoch = 1, primary = <node of CreateVolume>`` if it has none;
2. every copy's agent is asked for its state (a node that is not ready is not called);
3. a failover, when the primary's Node is NotReady *and* out-of-service or
   ``spec.promote`` names a node: ``status.epoch = E+1, primary = X`` is written by
   compare-and-set on the resourceVersion **before** ``promote(X, E+1)`` is called; a
   conflict (409) means another writer moved first: nothing is promoted, the pass retries;
4. the primary copy is promoted at the record's epoch if it is not yet (a crash between
   the compare-and-set and the promote is finished here); a returning old primary is
   demoted to the record's epoch;
5. a planned move (``spec.move``, or a retiring primary): ``status.moving``, the final
   sync, then compare-and-set of the new epoch and primary, promote, demote the old one;
6. copies: new ones placed and created (recorded in ``status.copies`` first, then made),
   the primary told whom to stream to, retiring copies released once others acknowledged;
7. node labels ``copy.statehold.io/<h16>`` on the nodes whose copy can serve;
8. ``status.copies``, ``lagSeconds`` and conditions, and Events for what changed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from statehold.controller.conditions import set_condition
from statehold.controller.problems import Result
from statehold.controller.reclaim import reclaim_if_released
from statehold.controller.replicas import Agents, CopyReport, CopyTarget
from statehold.controller.replication_policy import (
    SERVING_ROLES,
    CancelMove,
    CopyInfo,
    CopyPlan,
    CordonMove,
    Failover,
    Placement,
    PoolRoom,
    Record,
    Refuse,
    deduct,
    plan_copies,
    plan_cordon,
    plan_failover,
    primary_state,
)
from statehold.controller.replication_records import (
    ClusterFacts,
    ensure_records,
    first_primary,
    moves_on_cordon,
    read_facts,
    set_label,
)
from statehold.controller.retirement import retire_pools
from statehold.errors import Aborted, NotFound, StateholdError
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV, REPLICATED_VOLUME
from statehold.replication.cluster import record_of
from statehold.replication.context import DEFAULT_RPO_SECONDS
from statehold.replication.points import node_label

log = logging.getLogger("statehold.operator.replication")
Clock = Callable[[], datetime]
Report = CopyReport | Literal["missing", "unreachable"]
"""What asking a node's agent gave: its copy, no copy there, or no answer (or not asked:
the node is not ready)."""
COMPONENT = "statehold-operator"
RETRY = 10.0


def copy_state_name(c: CopyInfo, record: Record, lag: float | None, rpo: int,
                    retiring: bool) -> str:
    if not c.reachable:
        return "Unreachable"
    if retiring:
        return "Retiring"
    if c.node == record.primary and c.role == "primary":
        return "Serving"
    if c.role == "replica" and c.point:
        return "Lagging" if lag is not None and lag > rpo else "InSync"
    return {"stale": "Stale", "primary": "Stale"}.get(c.role, "Seeding")


@dataclass
class VolumePass:
    """One reconcile pass over one ReplicatedVolume."""

    kube: Kube
    agents: Agents
    rv: Obj
    facts: ClusterFacts
    now: Clock
    pools: list[PoolRoom] = field(default_factory=list)
    move_on_cordon: bool = True
    reports: dict[str, Report] = field(default_factory=dict)
    plan: CopyPlan = field(default_factory=CopyPlan)

    @property
    def name(self) -> str:
        return str(self.rv["metadata"]["name"])

    @property
    def volume(self) -> str:
        return str(self.rv["spec"]["volumeHandle"])

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.rv.get("status") or {})

    # -- writing ---------------------------------------------------------------------------
    def cas(self, **changes: Any) -> bool:
        """Compare-and-set of status fields (None removes one) against the reading the
        decision was made from; False on a conflict (someone else wrote first)."""
        new = copy.deepcopy(self.rv)
        st = new.setdefault("status", {})
        for key, value in changes.items():
            if value is None:
                st.pop(key, None)
            else:
                st[key] = value
        try:
            self.rv = self.kube.replace_status(new)
        except Aborted:
            log.info("event=cas_conflict volume=%s changes=%s", self.volume, sorted(changes))
            return False
        return True

    def patch_status(self, fields: dict[str, Any]) -> None:
        """Informational status (copies, lag, conditions): never epoch/primary/moving."""
        self.rv = self.kube.patch_status(REPLICATED_VOLUME, self.name, fields)

    def clear_request(self, which: Literal["promote", "move"]) -> None:
        """Drop a handled spec request, only if nobody changed the object since we read it
        (a new request written meanwhile is kept)."""
        try:
            self.rv = self.kube.patch(REPLICATED_VOLUME, self.name, {
                "metadata": {"resourceVersion": self.rv["metadata"]["resourceVersion"]},
                "spec": {which: None}})
        except Aborted:
            log.info("event=request_changed volume=%s request=%s", self.volume, which)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.kube.record_event(self.rv, type=type_, reason=reason, message=message,
                               component=COMPONENT)

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        conds = set_condition(self.status.get("conditions"), type_, ok, reason, message,
                              now=self.now(), generation=self.rv["metadata"].get("generation"))
        if conds != self.status.get("conditions"):
            self.patch_status({"conditions": conds})

    # -- reading ---------------------------------------------------------------------------
    def gather(self) -> None:
        """Ask each copy holder's agent (known copies, the primary, labelled nodes)."""
        key = node_label(self.volume)
        nodes = {c.node for c in record_of(self.rv).copies} | {self.status.get("primary", "")}
        nodes |= {n for n, labels in self.facts.labels.items() if key in labels}
        for node in sorted(n for n in nodes if n):
            h = self.facts.health.get(node)
            if h is None or not h.ready:
                self.reports[node] = "unreachable"
                continue
            try:
                self.reports[node] = self.agents.copy_state(node, self.volume)
            except NotFound:
                self.reports[node] = "missing"
            except StateholdError as exc:
                log.info("event=copy_unreachable volume=%s node=%s error=%s", self.volume, node, exc)
                self.reports[node] = "unreachable"

    def record(self) -> Record:
        """The record with copies as the agents just reported them. A copy whose Node is
        gone from the cluster is gone too; one the agent says it lacks is dropped, unless
        it is being created or is the primary's."""
        base = record_of(self.rv)
        known = {c.node: c for c in base.copies}
        copies = []
        for node in sorted(set(known) | set(self.reports)):
            if node not in self.facts.health:
                continue
            rep, old = self.reports.get(node), known.get(node)
            if isinstance(rep, CopyReport):
                copies.append(CopyInfo(node, rep.role, rep.point, rep.pool, rep.epoch))
            elif rep == "missing":
                if old is not None and self._entry(node).get("state") == "Creating":
                    copies.append(CopyInfo(node, "seeding", None, old.pool))
                elif node == base.primary:
                    copies.append(CopyInfo(node, "unknown", None, old.pool if old else ""))
            elif old is not None:
                copies.append(replace(old, reachable=rep is None and old.reachable))
            elif node == base.primary:
                copies.append(CopyInfo(node, "unknown", None, "", reachable=False))
        return replace(base, copies=tuple(copies))

    def _entry(self, node: str) -> dict[str, Any]:
        return next((c for c in self.status.get("copies") or [] if c.get("node") == node), {})

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> Result:
        if not self.status.get("epoch"):
            return self.initialise()
        self.gather()
        rec = self.record()
        failover = plan_failover(rec, self.facts.health)
        if isinstance(failover, Failover):
            return self.fail_over(rec, failover)
        if isinstance(failover, Refuse):
            self.refuse_failover(rec, failover)
        elif rec.promote is not None and rec.promote == rec.primary:
            self.clear_request("promote")  # done already (or asked for the primary itself)
        if primary_state(rec, self.facts.health) != "available":
            self.write_copies(rec)
            if rec.promote is None and primary_state(rec, self.facts.health) == "unreachable":
                self.condition("Ready", False, "PrimaryUnreachable",
                               f"node {rec.primary} is not ready. It may still be writing, so no "
                               "copy is promoted: taint it node.kubernetes.io/out-of-service once "
                               "it is off, or `kubectl statehold volume promote`")
            return Result.retry(f"primary {rec.primary} unavailable", RETRY)
        self.converge_roles(rec)
        outcome = self.moves(rec)
        if outcome is not None:
            return outcome
        rec = self.record()
        self.plan = plan_copies(rec, self.pools, self.facts.health, self.facts.retiring)
        self.apply_plan(rec)
        rec = self.record()
        self.write_copies(rec)
        self.label(rec)
        return self.report(rec)

    def initialise(self) -> Result:
        """epoch 1 at the node that made the first copy (from the PV); the reconcile that
        follows promotes that copy."""
        try:
            pv = self.kube.get(PV, self.name)
        except NotFound:
            return Result.retry(f"PV {self.name} not found", RETRY)
        node = first_primary(pv)
        if node is None:
            return Result.failed(f"PV {self.name} does not say which node made the volume")
        if not self.cas(epoch=1, primary=node):
            return Result.retry("record changed while initialising", 1.0)
        set_label(self.kube, node, self.volume, True)
        self.event("Normal", "Initialised", f"primary {node} at epoch 1")
        return self.run()

    def fail_over(self, rec: Record, f: Failover) -> Result:
        explicit = rec.promote is not None
        # the record first: from here on only the copy on f.to can be staged
        if not self.cas(epoch=f.epoch, primary=f.to, moving=None):
            return Result.retry("record changed; deciding again", 1.0)
        why = (f"promote requested for {f.to}" if explicit else
               f"node {rec.primary} is not ready and out of service")
        try:
            self.agents.promote(f.to, self.volume, f.epoch)
        except StateholdError as exc:
            self.event("Warning", "PromoteFailed", f"epoch {f.epoch} is recorded for {f.to}, "
                       f"whose agent refused or did not answer: {exc}; retrying")
            return Result.retry(f"promote on {f.to}: {exc}", RETRY)
        self.event("Warning" if not explicit else "Normal",
                   "Promoted" if explicit else "FailedOver",
                   f"{why}: the copy on {f.to} (point {f.point}) is primary at epoch {f.epoch}; "
                   f"writes after that point on {rec.primary} are lost")
        old = self.reports.get(rec.primary)
        if isinstance(old, CopyReport):  # alive: fence it now
            try:
                self.agents.demote(rec.primary, self.volume, f.epoch)
                self.reports[rec.primary] = replace(old, role="stale", epoch=f.epoch)
            except StateholdError as exc:
                log.info("event=demote_later volume=%s node=%s error=%s", self.volume,
                         rec.primary, exc)
        if explicit:
            self.clear_request("promote")
        return Result()

    def refuse_failover(self, rec: Record, refused: Refuse) -> None:
        self.condition("Ready", False, refused.reason, refused.message)
        self.event("Warning", refused.reason, refused.message)
        if rec.promote is not None:
            self.clear_request("promote")

    def converge_roles(self, rec: Record) -> None:
        """The recorded primary is promoted at the recorded epoch; any other copy that
        still thinks it is a primary learns the epoch (it becomes stale)."""
        for node, rep in self.reports.items():
            if not isinstance(rep, CopyReport):
                continue
            try:
                if node == rec.primary and (rep.role != "primary" or rep.epoch != rec.epoch):
                    self.agents.promote(node, self.volume, rec.epoch)
                    self.reports[node] = replace(rep, role="primary", epoch=rec.epoch)
                elif node != rec.primary and rep.role == "primary" and rep.epoch < rec.epoch:
                    self.agents.demote(node, self.volume, rec.epoch)
                    self.reports[node] = replace(rep, role="stale", epoch=rec.epoch)
                    self.event("Normal", "Fenced", f"the old primary on {node} (epoch "
                               f"{rep.epoch}) is stale now; it resyncs from {rec.primary}")
            except StateholdError as exc:
                log.warning("event=role_change_failed volume=%s node=%s error=%s",
                            self.volume, node, exc)

    def moves(self, rec: Record) -> Result | None:
        """A requested move (``spec.move``: by hand or a retirement), else one a cordon
        starts or a cancelled cordon ends (§9.5). None: the pass goes on."""
        if rec.move is not None:
            return self.planned_move(rec, rec.move)
        decision = plan_cordon(rec, self.facts.health, enabled=self.move_on_cordon
                               and moves_on_cordon(self.rv))
        if isinstance(decision, CordonMove):
            return self.planned_move(rec, decision.to, cordon=True)
        if isinstance(decision, CancelMove):
            return self.cancel_move(rec, decision)
        moving = {c.get("type"): c for c in self.status.get("conditions") or []}.get("Moving")
        if isinstance(decision, Refuse):
            if (moving or {}).get("reason") != decision.reason:
                self.event("Warning", decision.reason, decision.message)
            self.condition("Moving", False, decision.reason, decision.message)
        elif (moving or {}).get("reason") == "NoMoveTarget":
            self.condition("Moving", False, "NotCordoned", f"node {rec.primary} is schedulable")
        return None

    def planned_move(self, rec: Record, to: str, *, cordon: bool = False) -> Result | None:
        """§9.5. None when the move is done (or not needed) and the pass goes on.
        ``cordon``: started because the primary's Node is cordoned, not by ``spec.move``
        (there is no request to clear)."""
        if to == rec.primary and rec.moving is None:
            if not cordon:
                self.clear_request("move")
            return None
        target = rec.copy_on(to)
        if target is None or target.role != "replica" or not target.point or not target.reachable:
            if target is None:
                room = [p for p in self.pools if p.node == to and p.ready and not p.retiring
                        and p.free >= rec.size]
                if not room:
                    self.condition("Moving", False, "NoRoom", f"{to} has no Ready pool with "
                                   f"{rec.size} bytes free for a copy")
                    return Result.retry(f"no room on {to}", RETRY * 6)
                self.create_copy(rec, Placement(to, max(room, key=lambda p: p.free).pool))
            self.condition("Moving", False, "WaitingForCopy",
                           f"the copy on {to} has no acknowledged point yet")
            self.apply_plan(self.record(), only_streams=True)
            return Result.retry(f"waiting for a copy on {to}", RETRY)
        if rec.moving is None:
            if not self.cas(moving={"to": to, "epoch": rec.epoch}):
                return Result.retry("record changed; deciding again", 1.0)
            why = (f"node {rec.primary} is cordoned (or being drained)" if cordon
                   else "move requested")
            self.event("Normal", "MoveStarted", f"{why}: moving the primary from {rec.primary} "
                       f"to {to}: {rec.primary} no longer stages the volume; final sync once "
                       "it is unstaged")
        try:
            point = self.agents.final_sync(rec.primary, self.volume, to)
        except Aborted:
            self.condition("Moving", False, "WaitingForUnstage",
                           f"the volume is still staged on {rec.primary}")
            return Result.retry(f"still staged on {rec.primary}", RETRY)
        except StateholdError as exc:
            return self.abandon_move(rec, to, exc, requested=not cordon)
        return self.finish_move(rec, to, point, requested=not cordon)

    def cancel_move(self, rec: Record, cancel: CancelMove) -> Result | None:
        """A move that lost its reason: cancelled while the volume is still staged on the
        primary (the final sync says so: Aborted); finished when it is not (the pod has
        left and will start where the move leads)."""
        try:
            point = self.agents.final_sync(rec.primary, self.volume, cancel.to)
        except Aborted:
            if not self.cas(moving=None):
                return Result.retry("record changed; deciding again", 1.0)
            message = (f"{cancel.why} before the volume was unstaged: the move to {cancel.to} "
                       f"is cancelled; the primary stays on {rec.primary} at epoch {rec.epoch}")
            self.condition("Moving", False, "MoveCancelled", message)
            self.event("Normal", "MoveCancelled", message)
            return None
        except StateholdError as exc:
            return self.abandon_move(rec, cancel.to, exc, requested=False)
        return self.finish_move(rec, cancel.to, point, requested=False)

    def abandon_move(self, rec: Record, to: str, exc: StateholdError, *,
                     requested: bool) -> Result:
        self.cas(moving=None)
        if requested:
            self.clear_request("move")
        self.condition("Moving", False, "MoveAbandoned", f"final sync to {to} failed: {exc}")
        self.event("Warning", "MoveAbandoned", f"final sync to {to} failed ({exc}); the "
                   f"primary stays on {rec.primary} at epoch {rec.epoch}")
        return Result()

    def finish_move(self, rec: Record, to: str, point: str, *, requested: bool) -> Result | None:
        """The final point reached ``to``: the new epoch and primary by compare-and-set,
        then promote ``to`` and demote the old primary."""
        epoch = rec.epoch + 1
        if not self.cas(epoch=epoch, primary=to, moving=None):
            return Result.retry("record changed; deciding again", 1.0)
        try:
            self.agents.promote(to, self.volume, epoch)
        except StateholdError as exc:
            return Result.retry(f"promote on {to}: {exc}", RETRY)  # converge_roles finishes
        try:
            self.agents.demote(rec.primary, self.volume, epoch)
        except StateholdError as exc:
            log.info("event=demote_later volume=%s node=%s error=%s", self.volume, rec.primary, exc)
        if requested:
            self.clear_request("move")
        self.condition("Moving", True, "Moved", f"primary on {to} at epoch {epoch}")
        self.event("Normal", "Moved", f"primary moved from {rec.primary} to {to} at point {point} "
                   f"(epoch {epoch}); nothing acknowledged was lost")
        self.gather()
        return None

    def create_copy(self, rec: Record, where: Placement) -> None:
        """Record the copy (state Creating) first, then make it: a crash in between leaves
        an entry the next pass creates again, never an engine volume nobody tracks. The
        entry is a compare-and-set, so two passes racing (the kopf handler and the ticker)
        never both place a copy from the same reading."""
        entries = [c for c in self.status.get("copies") or [] if c.get("node") != where.node]
        entries.append({"node": where.node, "pool": where.pool, "role": "seeding",
                        "state": "Creating"})
        if not self.cas(copies=sorted(entries, key=lambda c: c["node"])):
            return
        try:
            self.agents.create_copy(where.node, self.volume, pool=where.pool, size=rec.size)
        except StateholdError as exc:
            self.event("Warning", "CopyFailed", f"cannot create a copy on {where.node}/"
                       f"{where.pool}: {exc}")
            return
        self.reports[where.node] = CopyReport(where.node, where.pool, "seeding", 0)
        self.event("Normal", "CopyAdded", f"new copy on {where.node} (pool {where.pool}); "
                   f"seeding from {rec.primary}")

    def apply_plan(self, rec: Record, *, only_streams: bool = False) -> None:
        plan = self.plan
        if not only_streams:
            if plan.refuse is not None:
                self.condition("Ready", False, plan.refuse.reason, plan.refuse.message)
            for where in plan.add:
                self.create_copy(rec, where)
            self.pools[:] = deduct(self.pools, plan.add, rec.size)
            if plan.move_to is not None and rec.move is None:
                self.rv = self.kube.patch(REPLICATED_VOLUME, self.name,
                                          {"spec": {"move": {"to": plan.move_to}}})
                self.event("Normal", "Retiring", f"the primary's pool on {rec.primary} is "
                           f"retiring: moving it to {plan.move_to}")
            release = list(plan.release)
            if release:
                # the primary stops streaming to the copies first: released before it
                # knows, a copy is created again by the primary's next stream and seeded
                # anew (a retired node kept a copy it had just given up)
                before = self.record()
                keep = [CopyTarget(c.node, c.pool) for c in before.copies
                        if c.node != before.primary and c.node not in set(release)]
                try:
                    self.agents.set_replicas(before.primary, self.volume, keep,
                                             rpo_seconds=self.rpo_seconds)
                except StateholdError as exc:
                    log.info("event=set_replicas_failed volume=%s error=%s (release waits)",
                             self.volume, exc)
                    release = []
            for node in release:
                try:
                    self.agents.release(node, self.volume)
                except NotFound:
                    pass
                except StateholdError as exc:
                    log.warning("event=release_failed volume=%s node=%s error=%s", self.volume,
                                node, exc)
                    continue
                set_label(self.kube, node, self.volume, False)
                self.reports[node] = "missing"
                self.event("Normal", "CopyReleased", f"the copy on {node} was released")
        rec = self.record()
        gone = set(plan.release)
        targets = [CopyTarget(c.node, c.pool) for c in rec.copies
                   if c.node != rec.primary and c.node not in gone]
        try:
            self.agents.set_replicas(rec.primary, self.volume, targets, rpo_seconds=self.rpo_seconds)
        except StateholdError as exc:
            log.info("event=set_replicas_failed volume=%s error=%s", self.volume, exc)

    @property
    def rpo_seconds(self) -> int:
        """The volume's RPO (``spec.rpoSeconds``; the CRD's default when absent)."""
        return int(self.rv["spec"].get("rpoSeconds") or DEFAULT_RPO_SECONDS)

    def write_copies(self, rec: Record) -> None:
        rpo = self.rpo_seconds
        entries, lags = [], []
        for c in rec.copies:
            rep, old = self.reports.get(c.node), self._entry(c.node)
            entry: dict[str, Any] = {"node": c.node, "role": c.role if c.role in (
                "primary", "replica", "seeding", "stale") else "unknown"}
            if c.pool:
                entry["pool"] = c.pool
            if c.point:
                entry["point"] = c.point
            lag = None
            if isinstance(rep, CopyReport):
                if rep.point_time:
                    entry["pointTime"] = rfc3339(datetime.fromtimestamp(rep.point_time, UTC))
                    lag = max(0.0, self.now().timestamp() - rep.point_time)
                elif rep.lag_seconds is not None:
                    lag = rep.lag_seconds
            else:  # not heard from: what we knew
                entry.update({k: old[k] for k in ("pointTime", "lagSeconds") if k in old})
            if lag is not None:
                entry["lagSeconds"] = round(lag, 3)
                if c.role == "replica":
                    lags.append(lag)
            entry["state"] = copy_state_name(c, rec, lag, rpo, (c.node, c.pool) in self.facts.retiring)
            if old.get("state") == "Creating" and not isinstance(rep, CopyReport):
                entry["state"] = "Creating"
            entries.append(entry)
        worst = round(max(lags), 3) if lags else None
        if entries != self.status.get("copies") or worst != self.status.get("lagSeconds"):
            self.patch_status({"copies": entries, "lagSeconds": worst})

    def label(self, rec: Record) -> None:
        """``copy.statehold.io/<h16>=true`` exactly on the nodes whose copy can serve (the
        primary, and replicas holding an acknowledged point); unreachable ones keep theirs."""
        key = node_label(self.volume)
        want = {c.node for c in rec.copies if c.reachable and c.role in SERVING_ROLES
                and (c.point or c.node == rec.primary)} | {rec.primary}
        keep = {c.node for c in rec.copies if not c.reachable}
        for node, labels in self.facts.labels.items():
            has = labels.get(key) == "true"
            if node in want and not has:
                set_label(self.kube, node, self.volume, True)
            elif has and node not in want and node not in keep:
                set_label(self.kube, node, self.volume, False)

    def report(self, rec: Record) -> Result:
        if self.plan.refuse is not None:
            return Result()  # Ready=False with the reason; the ticker looks again
        servable = [c for c in rec.copies if c.reachable and c.role in SERVING_ROLES and c.point]
        states = {e.get("state") for e in self.status.get("copies") or []}
        if len(servable) >= rec.replicas and states <= {"Serving", "InSync"}:
            self.condition("Ready", True, "Replicated",
                           f"{len(servable)} copies acknowledged; primary {rec.primary} at epoch "
                           f"{rec.epoch}")
            return Result()
        self.condition("Ready", False, "Replicating", f"{len(servable)} of {rec.replicas} copies "
                       f"hold an acknowledged point within the RPO")
        return Result()  # progress is the agents' work; the ticker looks again


def reconcile_volume(kube: Kube, agents: Agents, rv: Obj, now: Clock,
                     facts: ClusterFacts | None = None,
                     pools: list[PoolRoom] | None = None, *,
                     move_on_cordon: bool = True) -> tuple[Result, CopyPlan]:
    """One pass over one record (the kopf handler and the ticker both call it).
    ``move_on_cordon``: a cordoned primary's node starts a planned move (§9.5; the
    operator's ``--no-move-on-cordon`` turns it off for every volume)."""
    facts = facts if facts is not None else read_facts(kube)
    try:  # a PV released with reclaimPolicy Delete: its copies are deleted, not kept (§8.1)
        reclaimed = reclaim_if_released(kube, agents, rv, facts)
    except Aborted as exc:
        return Result.retry(f"conflict: {exc}", 1.0), CopyPlan()
    if reclaimed is not None:
        return reclaimed, CopyPlan()
    p = VolumePass(kube, agents, rv, facts, now,
                   pools if pools is not None else list(facts.pools), move_on_cordon)
    try:
        result = p.run()
    except NotFound:
        return Result(), p.plan  # the record was deleted meanwhile
    except Aborted as exc:
        return Result.retry(f"conflict: {exc}", 1.0), p.plan
    return result, p.plan


def replication_pass(kube: Kube, agents: Agents, now: Clock, *,
                     move_on_cordon: bool = True) -> dict[str, Result]:
    """The ticker: records for replicated PVs, one pass over each record (Node health is
    read fresh, so an out-of-service taint fails a volume over, and a cordon starts a
    move, without any change to the record), then each decommissioned StoragePool:
    its ``Retiring`` condition, and its export once nothing is left in it."""
    facts = read_facts(kube)
    pools = list(facts.pools)
    out: dict[str, Result] = {}
    plans: dict[str, CopyPlan] = {}
    for rv in ensure_records(kube, agents, facts):
        name = rv["metadata"]["name"]
        out[name], plans[name] = reconcile_volume(kube, agents, rv, now, facts, pools,
                                                  move_on_cordon=move_on_cordon)
    retire_pools(kube, agents, facts, plans, now)
    return out
