"""The node service's side of replicated volumes (docs/design/replication.md §8.1, §9).

* **Where the copy is.** A volume's handle names the pool of the node that created it;
  every other copy has the same engine name in a pool of its own node (StoragePools are
  named per node). :meth:`Replicas.local_id` turns a handle into this node's copy: the
  named pool when it holds the volume, else the one pool here that holds that name *with*
  replication state (a copy the agent made); anything else is left as it is (the backend
  answers NOT_FOUND).
* **Stage-time fencing.** NodeStageVolume of a volume whose context says
  ``statehold.io/replicas`` > 1 is decided by the cluster's record, read fresh through the
  Kube facade: :func:`statehold.replication.roles.check_writable` at ``status.epoch`` (an
  old primary is demoted durably and refused, ``Fenced``), and the stage-time table
  (:func:`statehold.replication.cluster.stage_decision`) must say *Stage*: this node is
  ``status.primary`` and no move is under way. Otherwise FAILED_PRECONDITION with the
  reason, which kubelet retries; a stale or lagging copy is never staged. A volume without
  a record (or with no epoch yet) is refused the same way: the operator records it first.
* **Standalone** (no Kubernetes API: the driver run without ``--cluster``): nothing is
  read and a replicated volume stages as any other, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from statehold.csi import naming
from statehold.engine.node import Node
from statehold.errors import FailedPrecondition, Fenced, NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import NODE, REPLICATED_VOLUME
from statehold.kube.nodes import NodeHealth, node_health
from statehold.replication import roles
from statehold.replication.cluster import (
    Decision,
    Failover,
    Move,
    Record,
    Refuse,
    Stage,
    record_of,
    stage_decision,
)
from statehold.replication.state import Role, StateStore

log = logging.getLogger("statehold.csi")

REPLICAS_KEY = "statehold.io/replicas"
"""The volume context key CreateVolume sets for a replicated volume (backend_local)."""


def replicated(context: Mapping[str, str]) -> bool:
    """Does the volume context (the PV's volumeAttributes) ask for more than one copy?"""
    raw = context.get(REPLICAS_KEY, "1")
    return raw.isdigit() and int(raw) > 1


class Replicas:
    def __init__(self, node: Node, node_id: str, kube: Kube | None = None) -> None:
        self.node = node
        self.node_id = node_id
        self.kube = kube

    def local_id(self, volume_id: str) -> str:
        """The id of this node's copy of ``volume_id`` (see the module docstring)."""
        try:
            pool_name, name = naming.split_id(volume_id)
        except NotFound:
            return volume_id
        self.node.refresh()
        tracked = []
        for pool in self.node.pools():
            try:
                pool.get_volume(name)
            except NotFound:
                continue
            if pool.name == pool_name:
                return volume_id
            if StateStore(pool.meta_dir).exists(name):
                tracked.append(pool.name)
        return naming.join_id(tracked[0], name) if len(tracked) == 1 else volume_id

    def check_stage(self, local_id: str, handle: str, context: Mapping[str, str]) -> None:
        """Refuse (FailedPrecondition, Fenced) to stage this node's copy ``local_id`` of
        the replicated volume ``handle`` unless the record makes it the writable primary."""
        if self.kube is None or not replicated(context):
            return
        record = self._record(handle)
        pool_name, name = naming.split_id(local_id)
        pool = self.node.pool(pool_name)
        decision = stage_decision(self.node_id, record, self._health())
        # check_writable takes the copy's replication lock (ABORTED while a stream holds
        # it), so it runs only where it matters: where the table says Stage, and on a copy
        # that still calls itself primary (an old one is demoted durably, and Fenced). The
        # state file is replaced atomically: reading it without the lock is safe.
        if isinstance(decision, Stage) or StateStore(pool.meta_dir).load(name).role is Role.PRIMARY:
            try:
                roles.check_writable(pool, name, record.epoch)
            except Fenced:
                log.warning("stage refused: copy fenced volume=%s node=%s epoch=%d", handle,
                            self.node_id, record.epoch)
                raise
        if not isinstance(decision, Stage):
            reason, message = _why(decision)
            log.info("stage refused volume=%s node=%s reason=%s", handle, self.node_id, reason)
            raise FailedPrecondition(f"{reason}: {message}")

    def _record(self, handle: str) -> Record:
        assert self.kube is not None
        found: Obj | None = next((rv for rv in self.kube.list(REPLICATED_VOLUME)
                                  if (rv.get("spec") or {}).get("volumeHandle") == handle), None)
        if found is None:
            raise FailedPrecondition(f"NotRecorded: replicated volume {handle} has no "
                                     "ReplicatedVolume record yet; the operator creates it")
        record = record_of(found)
        if record.epoch < 1 or not record.primary:
            raise FailedPrecondition(f"NotRecorded: the record of {handle} names no primary yet; "
                                     "the operator records the first one")
        return record

    def _health(self) -> dict[str, NodeHealth]:
        """Node health for the table's message (who is down, fenced); empty if unreadable."""
        assert self.kube is not None
        try:
            return {n["metadata"]["name"]: node_health(n) for n in self.kube.list(NODE)}
        except StateholdError as exc:
            log.info("node health unreadable at stage: %s", exc)
            return {}


def _why(decision: Decision) -> tuple[str, str]:
    """Reason and message of a decision that is not Stage."""
    if isinstance(decision, Refuse):
        return decision.reason, decision.message
    if isinstance(decision, Move):
        return ("MoveNeeded", f"the primary is on {decision.source}; this node holds a replica. "
                f"Move it here first (kubectl statehold volume move ... --to {decision.to}) or "
                f"run the pod on {decision.source}")
    if isinstance(decision, Failover):
        return ("FailoverPending", f"the primary's node is fenced; the operator promotes the copy "
                f"on {decision.to} at epoch {decision.epoch}")
    return "NotStaged", f"{decision}"  # Stage: never asked for
