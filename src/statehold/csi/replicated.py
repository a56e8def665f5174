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
  A copy found fenced while it is still staged here (kubelet repeating NodeStage) is made
  read-only on the spot (``engine.readonly.seal``).
* **DeleteVolume** reaches one node's plugin, whichever the provisioner asked (any node
  whose copy label the PV's affinity admits, or a central one). A replicated volume is
  deleted only where the record's primary is (:meth:`Replicas.delete_volume`): there the
  copy goes whole — its point snapshots, replication state and work file
  (``roles.release``), then the engine volume; the operator releases every other copy
  once the PV is gone. Anywhere else the answer is FAILED_PRECONDITION naming the
  primary's node, never a success that would leave the primary's copy behind. A volume
  without replicas, or without a record (the operator never saw it), is deleted here as
  before; with no copy here, NotFound (a success for the CO).
* **Standalone** (no Kubernetes API: the driver run without ``--cluster``): nothing is
  read and a replicated volume stages as any other, as before; DeleteVolume deletes this
  node's copy named by the handle, its replication state and point snapshots included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from statehold.csi import naming
from statehold.engine import readonly
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.errors import FailedPrecondition, Fenced, InvalidArgument, NotFound, StateholdError
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
from statehold.replication.context import REPLICAS_KEY
from statehold.replication.state import Role, StateStore

log = logging.getLogger("statehold.csi")



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
                _seal_if_used(pool, name)
                raise
        if not isinstance(decision, Stage):
            reason, message = _why(decision)
            log.info("stage refused volume=%s node=%s reason=%s", handle, self.node_id, reason)
            raise FailedPrecondition(f"{reason}: {message}")

    def delete_volume(self, handle: str) -> None:
        """DeleteVolume of the local volume ``handle`` on this node (see the module
        docstring). NotFound: nothing of it here (the CO's success); FailedPrecondition:
        the primary's copy is on another node, or this node's copy is in use."""
        local = self.local_id(handle)
        pool_name, name = naming.split_id(local)
        try:
            pool = self.node.pool(pool_name)
            vol = pool.get_volume(name)
        except (NotFound, InvalidArgument):  # no such pool or volume here (or no such name)
            pool, vol = None, None
        tracked = pool is not None and StateStore(pool.meta_dir).exists(name)
        plain = vol is not None and not tracked and not replicated(vol.labels)
        if self.kube is not None and not plain:
            self._check_delete(handle, here=pool is not None and local == handle)
        if pool is None or vol is None:
            raise NotFound(f"no copy of volume {handle!r} on {self.node_id}")
        if vol.device is not None or vol.mounts:
            raise FailedPrecondition(f"volume {handle!r} is in use on {self.node_id} (attached or "
                                     "mounted); it is not deleted")
        if tracked:
            _release_copy(pool, name)
        pool.delete_volume(name)
        log.info("volume deleted volume=%s copy=%s node=%s replicated=%s", handle, local,
                 self.node_id, tracked)

    def _check_delete(self, handle: str, *, here: bool) -> None:
        """Refuse unless this node may delete the replicated volume: the record's primary,
        or, before the operator recorded one, the node that created it (its pool is here)."""
        found = self._find(handle)
        if found is None:
            return  # never recorded: only the copy CreateVolume made exists
        record = record_of(found)
        if record.primary and record.primary != self.node_id:
            raise FailedPrecondition(
                f"PrimaryElsewhere: the primary copy of {handle} is on {record.primary} (epoch "
                f"{record.epoch}); DeleteVolume deletes it on that node's plugin, and the "
                "operator releases the other copies once the PV is gone")
        if not record.primary and not here:
            raise FailedPrecondition(f"NotRecorded: the record of {handle} names no primary yet; "
                                     "the node that created it deletes it")

    def _find(self, handle: str) -> Obj | None:
        assert self.kube is not None
        return next((rv for rv in self.kube.list(REPLICATED_VOLUME)
                     if (rv.get("spec") or {}).get("volumeHandle") == handle), None)

    def _record(self, handle: str) -> Record:
        found = self._find(handle)
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


def _seal_if_used(pool: Pool, name: str) -> None:
    """A copy just found fenced that is still staged here (kubelet repeating NodeStage of
    an old primary): made read-only at once, as its agent would (engine/readonly.py)."""
    try:
        vol = pool.get_volume(name)
        if vol.device is not None or vol.mounts:
            readonly.seal(vol.device)
    except StateholdError as exc:
        log.error("sealing the fenced copy %s/%s failed: %s", pool.name, name, exc)


def _release_copy(pool: Pool, name: str) -> None:
    """The copy's replication: point snapshots, work file, state (the engine volume is the
    caller's to delete next; a crash in between leaves a plain volume a retry deletes)."""
    roles.release(pool, name)


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
