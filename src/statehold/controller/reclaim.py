"""Reclaiming a replicated volume whose PV was released with ``reclaimPolicy: Delete``
(docs/design/replication.md §8.1).

Why the operator does it: the chart runs external-provisioner in node-deployment mode,
where each node's provisioner deletes only a PV whose node affinity matches its own node's
topology. A replicated PV's affinity names the per-volume copy label
(``copy.statehold.io/<h16>``), which no node's CSI topology carries, so no provisioner ever
calls DeleteVolume and every copy would stay forever. The operator reaches every node
through the agents, so it deletes the volume itself:

1. every copy, the record's primary's first, each whole (``Agents.delete_copy``: the
   agent's Release with ``whole``: point snapshots, replication state, work file, then the
   engine volume: what CSI DeleteVolume does on the primary's node). A copy still attached
   or mounted is refused by its agent: nothing more is deleted in that pass, a Warning
   Event says why, and the pass retries. A node that is not ready is waited for the same
   way (its copy cannot be deleted, and the PV must not go before it);
2. the node's copy label once its copy is gone, and any label left;
3. the PV: the external-provisioner finalizer is removed (only now, by a
   compare-and-set on the resourceVersion), then the object deleted;
4. the record, once the PV is gone (while another finalizer still holds the PV, the next
   pass finds it Released again and repeats 1-3, all done already).

Every step is idempotent: a copy already gone is done, so a repeat after a crash
finishes the job, and so does a provisioner that *does* call DeleteVolume (a controller-
mode deployment): whichever comes first deletes the primary's copy, the other gets
NotFound (the CSI plugin answers that as success too). A PV with any other reclaim policy
or phase is never touched (:func:`~statehold.controller.replication_policy.plan_reclaim`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from statehold.controller.problems import Result
from statehold.controller.replicas import Agents
from statehold.controller.replication_policy import Reclaim, plan_reclaim
from statehold.controller.replication_records import ClusterFacts, first_primary, set_label
from statehold.errors import Aborted, FailedPrecondition, NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV, REPLICATED_VOLUME
from statehold.replication.points import node_label

log = logging.getLogger("statehold.operator.reclaim")

FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
"""The finalizer external-provisioner puts on the PVs it provisions; removed here only once
every copy is gone."""

COMPONENT = "statehold-operator"
RETRY = 10.0


def plan_for(pv: Obj, rv: Obj, facts: ClusterFacts) -> Reclaim | None:
    """The policy's decision for this PV and record (None: not reclaimed now)."""
    status: dict[str, Any] = rv.get("status") or {}
    volume = str(rv["spec"]["volumeHandle"])
    key = node_label(volume)
    return plan_reclaim(
        phase=str((pv.get("status") or {}).get("phase") or ""),
        policy=str((pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or ""),
        primary=str(status.get("primary") or first_primary(pv) or ""),
        copies=[str(c.get("node") or "") for c in status.get("copies") or []],
        labelled=[n for n, labels in facts.labels.items() if key in labels],
        nodes=facts.health.keys())


def reclaim_if_released(kube: Kube, agents: Agents, rv: Obj, facts: ClusterFacts) -> Result | None:
    """Reclaim the volume of record ``rv`` if its PV is Released with policy Delete (see the
    module docstring). None: it is not (the record is reconciled as usual)."""
    try:
        pv = kube.get(PV, rv["metadata"]["name"])
    except NotFound:
        return None  # the record's retirement (replication_records.ensure_records)
    plan = plan_for(pv, rv, facts)
    if plan is None:
        return None
    reclaimer = Reclaimer(kube, agents, pv, rv, facts)
    try:
        return reclaimer.run(plan)
    except Aborted:
        raise  # a conflict: the caller decides again at once
    except StateholdError as exc:  # the API refused (RBAC, admission): this volume waits
        return reclaimer.wait("ReclaimFailed", f"reclaiming {reclaimer.volume}: {exc}")


class Reclaimer:
    """One reclaim pass over one released PV."""

    def __init__(self, kube: Kube, agents: Agents, pv: Obj, rv: Obj, facts: ClusterFacts) -> None:
        self.kube = kube
        self.agents = agents
        self.pv = pv
        self.rv = rv
        self.facts = facts
        self.volume = str(rv["spec"]["volumeHandle"])
        self.name = str(pv["metadata"]["name"])

    def event(self, type_: str, reason: str, message: str) -> None:
        with contextlib.suppress(StateholdError):  # an Event is information, never a blocker
            self.kube.record_event(self.pv, type="Warning" if type_ == "Warning" else "Normal",
                                   reason=reason, message=message, component=COMPONENT)

    def run(self, plan: Reclaim) -> Result:
        for node in plan.order:
            waiting = self.delete_copy(node)
            if waiting is not None:
                return waiting
        for node in plan.unlabel:
            set_label(self.kube, node, self.volume, False)
        if plan.order:
            log.info("event=copies_deleted pv=%s volume=%s nodes=%s", self.name, self.volume,
                     ",".join(plan.order))
        return self.delete_pv(plan)

    def delete_copy(self, node: str) -> Result | None:
        """The copy on ``node`` deleted whole (None), or why the reclaim waits."""
        health = self.facts.health.get(node)
        if health is None or not health.ready:
            return self.wait("ReclaimWaiting", f"node {node} holds a copy of {self.volume} and "
                             "is not ready: the volume is deleted once its agent answers "
                             "(or once its Node object is deleted)")
        try:
            self.agents.delete_copy(node, self.volume)
        except FailedPrecondition as exc:
            return self.wait("VolumeInUse", f"the copy of {self.volume} on {node} is still in "
                             f"use ({exc}): deleted once it is unstaged")
        except StateholdError as exc:
            return self.wait("ReclaimWaiting", f"deleting the copy of {self.volume} on {node} "
                             f"failed ({exc}); retrying")
        set_label(self.kube, node, self.volume, False)
        return None

    def wait(self, reason: str, message: str) -> Result:
        log.info("event=reclaim_waiting pv=%s reason=%s message=%s", self.name, reason, message)
        self.event("Warning", reason, message)
        return Result.retry(message, RETRY)

    def delete_pv(self, plan: Reclaim) -> Result:
        """Every copy is gone: the provisioner's finalizer, the PV, then the record."""
        meta = self.pv["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            try:
                self.kube.patch(PV, self.name, {"metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "finalizers": [f for f in finalizers if f != FINALIZER]}})
            except NotFound:
                pass
            except Aborted:  # changed since read (the provisioner itself?): decide again
                return Result.retry(f"PV {self.name} changed while reclaiming", 1.0)
        if not meta.get("deletionTimestamp"):
            self.event("Normal", "Reclaimed", f"every copy of {self.volume} was deleted "
                       f"({', '.join(plan.order) or 'none left'}); deleting the PV")
        try:
            self.kube.delete(PV, self.name)
            self.kube.get(PV, self.name)
        except NotFound:
            with contextlib.suppress(NotFound):
                self.kube.delete(REPLICATED_VOLUME, str(self.rv["metadata"]["name"]))
            log.info("event=reclaimed pv=%s volume=%s", self.name, self.volume)
            return Result()
        # another finalizer still holds the PV: the record stays until it is gone
        return Result.retry(f"PV {self.name} is deleted once its other finalizers go", RETRY)
