"""VolumeBackup handlers.

Two halves, because the data is on one node and the checks are cluster-wide:

* :func:`assign_backup` (cluster operator): target and Secrets exist, the PVC is bound to a
  Statehold local volume -> label the VolumeBackup with its node. Anything wrong: a
  condition with the reason and a Warning Event; nothing is created.
* :func:`run_backup` (the agent on that node): snapshot, back up, report phase, bytes and
  progress; then, for a schedule's backup, apply the schedule's retention to the volume's
  backups of that schedule (:mod:`statehold.controller.pruning`).
* :func:`forget_backup` (the same agent): a VolumeBackup annotated
  ``statehold.io/forget: "true"`` has its backup removed from the repository, then the
  object is deleted. The agent does it because it reaches the repository (a directory
  target is mounted on the nodes only). Finalizer-free on purpose: deleting a VolumeBackup
  without the annotation keeps its backup, and no deletion ever waits on a repository.

Pinning takes two writes, because the label is metadata and the location is status (a
subresource on a real API server: no single write sets both). The agent reacts to the
label, so the operator writes the status first and the label second: any version of the
object that carries the label already carries the location. An agent that still sees the
label without a location (an older operator, a replayed event) retries; an ordering of
our own writes never fails a backup.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from statehold.backup.collecting import forget
from statehold.backup.repository import Repository
from statehold.backup.volumes import snapshot_name
from statehold.controller import backup_runner, pruning
from statehold.controller.locate import check_pvc_bound, locate
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem
from statehold.controller.shared_backups import run_shared_backup
from statehold.controller.shared_locate import (
    choose_node,
    driver_nodes,
    handle_kind,
    is_shared_pv,
    locate_shared,
)
from statehold.controller.targets import resolve_target
from statehold.engine.node import Node
from statehold.errors import (
    Corrupt,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    PermissionDenied,
    StateholdError,
)
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import CSI_NODE, PV, PVC, VOLUME_BACKUP, Kind
from statehold.kube.objects import as_pv, as_pvc
from statehold.shared.service import SharedVolumes

NODE_LABEL = "statehold.io/node"
PVC_LABEL = "statehold.io/pvc"
SCHEDULE_LABEL = pruning.SCHEDULE_LABEL
KEEP_LAST_ANNOTATION = pruning.KEEP_LAST_ANNOTATION
FORGET_ANNOTATION = "statehold.io/forget"
"""``"true"``: remove this VolumeBackup's backup from the repository, then the object."""
FORGET_RETRY = 30.0
FINAL = ("Completed", "Failed")
ASSIGNMENT_RETRY = 5.0
"""Seconds before an agent looks again at an object labelled for it whose location has
not landed yet (the operator's next write, normally milliseconds away)."""
PERMANENT_ENGINE_ERRORS = (InvalidArgument, PermissionDenied, Corrupt, NotFound)


def assign_backup(kube: Kube, obj: Obj, now: Clock) -> Result:
    """Cluster side: validate and pin the VolumeBackup to the node holding the volume."""
    rep = Reporter(kube, obj, now)
    st = rep.status
    if st.get("phase") in FINAL or (obj["metadata"].get("labels") or {}).get(NODE_LABEL):
        return Result("skipped")
    ns, spec = obj["metadata"]["namespace"], obj["spec"]
    try:
        resolve_target(kube, ns, spec["target"])
        try:
            pvc = as_pvc(kube.get(PVC, spec["persistentVolumeClaimName"], ns))
        except NotFound:
            raise Problem("PVCNotFound", f"PVC {ns}/{spec['persistentVolumeClaimName']} does "
                          "not exist") from None
        pv = as_pv(kube.get(PV, check_pvc_bound(pvc)))
        if is_shared_pv(pv):
            # every node reaches a shared volume: any agent will do, the same one each time
            shared = locate_shared(pvc, pv)
            handle, size = shared.handle, shared.size
            node = choose_node(handle, driver_nodes(kube.list(CSI_NODE)))
            where = f"shared volume {handle} will be backed up by the agent on {node}"
        else:
            loc = locate(pvc, pv)
            node, handle, size = loc.node, loc.handle, loc.size
            where = f"volume {handle} is on node {node}"
    except Problem as p:
        return report_problem(rep, p)
    return pin_to_node(kube, rep, VOLUME_BACKUP, obj, node,
                       {"volumeHandle": handle, "bytesTotal": size, "progress": 0},
                       {PVC_LABEL: pvc["metadata"]["name"]}, scheduled=where)


def pin_to_node(kube: Kube, rep: Reporter, kind: Kind, obj: Obj, node: str, status: dict[str, Any],
                labels: dict[str, str] | None = None, *, scheduled: str) -> Result:
    """The cluster side's last step: hand ``obj`` to the agent on ``node``.

    Status first, label second: the label wakes the agent, which reads the location the
    status carries (an agent that sees the label first retries: :func:`not_yet_assigned`),
    and once it has begun it may write Running, which a later Pending from here would undo.
    """
    meta = obj["metadata"]
    rep.update({"phase": "Pending", "node": node, **status},
               condition=("Ready", False, "Scheduled", f"waiting for the agent on {node}"))
    kube.patch(kind, meta["name"], {"metadata": {"labels": {NODE_LABEL: node, **(labels or {})}}},
               meta.get("namespace"))
    rep.event("Normal", "Scheduled", scheduled)
    return Result()


def not_yet_assigned(obj: Obj, field: str) -> Result | None:
    """Retry (writing nothing) while the status ``field`` the operator writes when it pins
    the object to a node is missing: the label may be seen before it."""
    if (obj.get("status") or {}).get(field):
        return None
    return Result.retry(f"{obj['metadata']['name']}: labelled for this node, status.{field} "
                        "not written yet", ASSIGNMENT_RETRY)


class _Progress:
    """Throttled progress reports into status (every 5% or 10 s)."""

    def __init__(self, rep: Reporter, clock: Callable[[], float] = time.monotonic) -> None:
        self.rep, self.clock = rep, clock
        self.last_pct, self.last_t = -100, 0.0

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(99, done * 100 // total)
        t = self.clock()
        if pct - self.last_pct >= 5 or t - self.last_t >= 10:
            self.last_pct, self.last_t = pct, t
            # a lost progress report must not fail the backup
            with contextlib.suppress(StateholdError):
                self.rep.update({"progress": pct, "bytesDone": done})


def run_backup(kube: Kube, obj: Obj, node: Node, node_name: str, now: Clock,
               shared: SharedVolumes | None = None) -> Result:
    """Node side: snapshot the volume and back it up; idempotent (a retry reuses the
    snapshot and writes a complete new backup). Shared volumes go to shared mode's
    file-tree backup instead."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    st = rep.status
    if (obj["metadata"].get("labels") or {}).get(NODE_LABEL) != node_name:
        return Result("skipped")
    if st.get("phase") in FINAL:
        return retention_after(kube, rep) if pruning.pending(obj) else Result("skipped")
    if (wait := not_yet_assigned(obj, "volumeHandle")) is not None:
        return wait
    if handle_kind(str(st.get("volumeHandle", ""))) == "shared":
        if shared is None:
            return report_problem(rep, Problem("SharedUnavailable", "this agent has no shared "
                                               "backend", permanent=True))
        return run_shared_backup(kube, obj, shared, node_name, now)
    ns, spec, meta = obj["metadata"]["namespace"], obj["spec"], obj["metadata"]
    try:
        target = resolve_target(kube, ns, spec["target"])
        pool_name, _, volume = str(st.get("volumeHandle", "")).partition("/")
        try:
            pool = node.pool(pool_name)
            pool.get_volume(volume)
        except NotFound as exc:
            raise Problem("VolumeNotFound", f"volume {pool_name}/{volume} is not on node "
                          f"{node_name}: {exc}", permanent=True) from exc
    except Problem as p:
        return report_problem(rep, p)
    snapshot = snapshot_name(volume, key=meta["uid"])  # the name the backup will use
    rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now()),
                "node": node_name, "snapshot": snapshot},
               condition=("Ready", False, "Running", "backing up"))
    if st.get("phase") != "Running":
        rep.event("Normal", "Started", f"backing up {pool_name}/{volume} to {target.describe()}")
    try:
        done = backup_runner.back_up_volume(
            pool, volume, target, key=meta["uid"], progress=_Progress(rep),
            origin=pruning.origin_of(obj),
            labels={"namespace": ns, "pvc": spec["persistentVolumeClaimName"],
                    "volumebackup": meta["name"]})
    except (FailedPrecondition, OutOfCapacity) as exc:
        return report_problem(rep, Problem("BackupFailed", str(exc), retry_after=60),
                              pending_phase="Running")
    except PERMANENT_ENGINE_ERRORS as exc:
        return report_problem(rep, Problem(type(exc).__name__, str(exc), permanent=True))
    except StateholdError as exc:  # Unavailable, Temporary, CommandError, Aborted
        return report_problem(rep, Problem("BackupRetrying", str(exc), retry_after=30),
                              pending_phase="Running")
    rep.update({"phase": "Completed", "backupId": done.backup_id,
                "parentBackupId": done.parent_id, "bytesTotal": done.size,
                "bytesDone": done.bytes_read, "bytesUploaded": done.bytes_uploaded,
                "progress": 100, "completionTime": rfc3339(now())},
               condition=("Ready", True, "Completed", f"backup {done.backup_id}"))
    kind = "incremental" if done.parent_id else "full"
    rep.event("Normal", "Completed", f"{kind} backup {done.backup_id}: read {done.bytes_read} "
              f"bytes, uploaded {done.bytes_uploaded}")
    if done.damaged:  # passed over, never a reason to fail this backup (format §9.1)
        rep.event("Warning", "DamagedBackups", f"{target.describe()} holds backups that cannot be "
                  f"read: {', '.join(d.backup_id for d in done.damaged)}; `statehold backup "
                  "verify` names the damage, `statehold backup forget` removes one")
    return pruning.apply_retention(kube, rep, target, str(st.get("volumeHandle")))


def retention_after(kube: Kube, rep: Reporter) -> Result:
    """A Completed VolumeBackup whose retention is still to apply (deferred: the
    repository was busy; or the agent stopped in between): apply it now."""
    try:
        target = resolve_target(kube, rep.obj["metadata"]["namespace"], rep.obj["spec"]["target"])
    except Problem as p:
        rep.update(condition=(pruning.CONDITION, False, p.reason, p.message))
        return Result.retry(p.message, p.retry_after)
    return pruning.apply_retention(kube, rep, target, str(rep.status.get("volumeHandle")))


def wants_forget(obj: Obj) -> bool:
    return (obj["metadata"].get("annotations") or {}).get(FORGET_ANNOTATION) == "true"


def forget_backup(kube: Kube, obj: Obj, node_name: str, now: Clock) -> Result:
    """Node side, for a VolumeBackup annotated ``statehold.io/forget: "true"``: remove its
    backup from the repository (``statehold backup forget``: the manifest; the chunks go at
    the next gc), record a ``Forgotten`` Event, then delete the object. A backup still
    running is waited for; a failed one stored nothing, so only the object goes. Backups
    made after it from the same volume stay whole (every manifest is complete)."""
    meta = obj["metadata"]
    if not wants_forget(obj) or (meta.get("labels") or {}).get(NODE_LABEL) != node_name:
        return Result("skipped")
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    st = rep.status
    if st.get("phase") not in FINAL:
        return Result.retry(f"{meta['name']}: forgotten once its backup has finished", FORGET_RETRY)
    backup_id = str(st.get("backupId") or "")
    if backup_id:
        try:
            where = _forget_in_repository(kube, meta["namespace"], obj["spec"]["target"], backup_id)
        except Problem as p:
            rep.update(condition=("Forgotten", False, p.reason, p.message))
            rep.event("Warning", p.reason, p.message)
            return Result.retry(p.message, p.retry_after)
        rep.event("Normal", "Forgotten", f"backup {backup_id} removed from {where}; its chunks go "
                  "at the repository's next gc")
    with contextlib.suppress(NotFound):  # a retry after the delete
        kube.delete(VOLUME_BACKUP, meta["name"], meta["namespace"])
    return Result()


def _forget_in_repository(kube: Kube, namespace: str, target_name: str, backup_id: str) -> str:
    """Remove the backup; already gone is fine (a retry, or `statehold backup forget`)."""
    target = resolve_target(kube, namespace, target_name)
    try:
        repo = Repository.open(backup_runner.open_store(target), target.password)
    except NotFound as exc:  # not this backup's repository: never delete the record blindly
        raise Problem("RepositoryNotFound", f"{target.describe()}: {exc}", retry_after=300) from exc
    except StateholdError as exc:
        raise Problem("RepositoryUnusable", f"{target.describe()}: {exc}", retry_after=60) from exc
    try:
        forget(repo, backup_id)
    except NotFound:
        pass
    except StateholdError as exc:  # Aborted (prune or gc running), Unavailable
        raise Problem("ForgetRetrying", f"backup {backup_id} in {target.describe()}: {exc}",
                      retry_after=FORGET_RETRY) from exc
    return target.describe()


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields `kubectl statehold get backups` shows."""
    st = obj.get("status") or {}
    return {"name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "pvc": obj["spec"]["persistentVolumeClaimName"], "target": obj["spec"]["target"],
            "phase": st.get("phase", "Pending"), "progress": st.get("progress", 0),
            "bytes": st.get("bytesTotal", 0), "node": st.get("node", ""),
            "backupId": st.get("backupId", "")}
