"""VolumeBackup and VolumeRestore of shared volumes, on the agent the cluster side chose.

A shared volume is a directory tree, so it goes through shared mode's file-tree backup
(:meth:`SharedVolumes.backup` reads a snapshot of the directory; the parent is the newest
tree backup of the same volume id) and restore (:meth:`SharedVolumes.restore` builds a new
volume aside and renames it in), never through the block-volume path. The agent's
:class:`~statehold.shared.service.SharedVolumes` is built from the same home as the node's
CSI plugin, so both see the same root registry and share mounts.

The agent learns the share from the PV's ``volumeAttributes`` (or the StorageClass for a
restore) and records it in its home's root registry, as NodeStage does: volume ids carry
only the root's key. :func:`register_class_roots` does the same for every ``type: shared``
StorageClass of our driver, so any node can serve DeleteVolume of any shared volume.
"""

from __future__ import annotations

import contextlib
from typing import Any

from statehold.backup.volumelock import volume_lock
from statehold.controller import backup_runner, pruning
from statehold.controller.claims import RESTORE_ANNOTATION, create_bound_pair
from statehold.controller.locate import DRIVER, check_pvc_bound
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem, report_restored
from statehold.controller.shared_locate import check_access_modes, class_kind, locate_shared
from statehold.controller.targets import TargetConfig, resolve_target
from statehold.engine.names import parse_size
from statehold.errors import (
    Corrupt,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    OutOfRange,
    PermissionDenied,
    StateholdError,
)
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV, PVC, STORAGE_CLASS
from statehold.kube.objects import as_pv, as_pvc
from statehold.shared.parameters import VolumeClass
from statehold.shared.registry import RootSpec
from statehold.shared.service import SharedVolumes, VolumeRecord

PERMANENT = (InvalidArgument, PermissionDenied, Corrupt, NotFound, OutOfRange)


def _failure(rep: Reporter, exc: StateholdError, verb: str) -> Result:
    """One mapping of core errors for both handlers: bad input and missing things end the
    object; a share that is busy, full or unreachable is retried."""
    if isinstance(exc, Problem):
        return report_problem(rep, exc)
    if isinstance(exc, PERMANENT):
        return report_problem(rep, Problem(type(exc).__name__, str(exc), permanent=True))
    if isinstance(exc, FailedPrecondition | OutOfCapacity):
        return report_problem(rep, Problem(f"{verb}Failed", str(exc), retry_after=60),
                              pending_phase="Running")
    return report_problem(rep, Problem(f"{verb}Retrying", str(exc), retry_after=30),
                          pending_phase="Running")


def remember_root(volumes: SharedVolumes, root: dict[str, str] | Any, key: str | None = None) -> RootSpec:
    """Record a root description in this node's registry; with ``key``, refuse one that
    describes another root than the volume id names."""
    spec = RootSpec.from_parameters(dict(root))
    if key is not None and spec.key != key:
        raise Problem("RootMismatch", f"the PV describes shared root {spec.key}, its volume id "
                      f"names {key}", permanent=True)
    volumes.remember(spec)
    return spec


def run_shared_backup(kube: Kube, obj: Obj, volumes: SharedVolumes, node_name: str,
                      now: Clock) -> Result:
    """Node side of a VolumeBackup whose volume is shared (status.volumeHandle shared/...)."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    meta, spec, st = obj["metadata"], obj["spec"], rep.status
    ns = meta["namespace"]
    try:
        target = resolve_target(kube, ns, spec["target"])
        pvc = as_pvc(kube.get(PVC, spec["persistentVolumeClaimName"], ns))
        loc = locate_shared(pvc, as_pv(kube.get(PV, check_pvc_bound(pvc))))
        if loc.handle != st.get("volumeHandle"):
            raise Problem("VolumeChanged", f"PVC now names volume {loc.handle}, the backup was "
                          f"scheduled for {st.get('volumeHandle')}", permanent=True)
        remember_root(volumes, dict(loc.root), loc.root_key)
        rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now()),
                    "node": node_name},
                   condition=("Ready", False, "Running", "backing up the file tree"))
        if st.get("phase") != "Running":
            rep.event("Normal", "Started", f"backing up shared volume {loc.handle} to "
                      f"{target.describe()}")
        m = back_up(volumes, loc.handle, target, origin=pruning.origin_of(obj),
                    labels={"namespace": ns, "pvc": spec["persistentVolumeClaimName"],
                            "volumebackup": meta["name"]})
    except StateholdError as exc:
        return _failure(rep, exc, "Backup")
    rep.update({"phase": "Completed", "backupId": m.backup_id, "parentBackupId": m.parent,
                "bytesTotal": m.size, "bytesDone": m.stats.bytes_read,
                "bytesUploaded": m.stats.stored_new, "progress": 100,
                "completionTime": rfc3339(now())},
               condition=("Ready", True, "Completed", f"backup {m.backup_id}"))
    kind = "incremental" if m.parent else "full"
    rep.event("Normal", "Completed", f"{kind} file-tree backup {m.backup_id}: read "
              f"{m.stats.bytes_read} bytes, uploaded {m.stats.stored_new}")
    return pruning.apply_retention(kube, rep, target, loc.handle)


def back_up(volumes: SharedVolumes, handle: str, target: TargetConfig, *, origin: str = "",
            labels: dict[str, str] | None = None) -> Any:
    """One backup of the volume at a time on this node (the same lock as local volumes);
    ``origin`` (a schedule's) goes into the manifest, whose retention the caller applies."""
    with volume_lock(handle):
        repo = backup_runner.open_repository(target)
        return volumes.backup(handle, repo, labels=labels, origin=origin)


def _pv(obj: Obj, rec: VolumeRecord, sc: str, modes: list[str]) -> dict[str, Any]:
    meta, spec = obj["metadata"], obj["spec"]
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {
            "pv.kubernetes.io/provisioned-by": DRIVER, RESTORE_ANNOTATION: meta["uid"]}},
        "spec": {
            "capacity": {"storage": str(rec.volume.size)},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": sc, "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": spec["persistentVolumeClaimName"]},
            # no node affinity: every node reaches the share
            "csi": {"driver": DRIVER, "volumeHandle": rec.id,
                    "volumeAttributes": rec.context},
        },
    }


def run_shared_restore(kube: Kube, obj: Obj, vb: dict[str, Any], volumes: SharedVolumes,
                       node_name: str, now: Clock) -> Result:
    """Node side of a VolumeRestore of a shared volume's backup: a new shared volume on the
    class's root, then a PV (no node affinity) and its PVC. A retry after the volume exists
    only (re)creates the objects."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    meta, spec, st = obj["metadata"], obj["spec"], rep.status
    ns, sc_name = meta["namespace"], spec.get("storageClassName", "statehold-local")
    try:
        target = resolve_target(kube, ns, vb["spec"]["target"])
        sc = kube.get(STORAGE_CLASS, sc_name)
        if class_kind(sc) != "shared":
            raise Problem("BackupKindMismatch", f"StorageClass {sc_name} is not a shared class",
                          permanent=True)
        modes = check_access_modes(spec.get("accessModes") or [], "shared")
        params = {str(k): str(v) for k, v in (sc.get("parameters") or {}).items()}
        backup_id = vb["status"]["backupId"]
        rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now())},
                   condition=("Ready", False, "Running", f"restoring backup {backup_id}"))
        size = parse_size(str(spec["size"])) if spec.get("size") else None
        repo = backup_runner.open_repository(target)
        rec = volumes.restore(backup_id, repo, f"pvc-{meta['uid']}",
                              VolumeClass.from_parameters(params), size=size)
        if st.get("volumeHandle") != rec.id:
            rep.update({"volumeHandle": rec.id})
            rep.event("Normal", "Restored", f"backup {backup_id} restored into shared volume "
                      f"{rec.id}")
        pv = _pv(obj, rec, sc_name, modes)
        create_bound_pair(kube, obj, pv, sc_name, modes)
    except StateholdError as exc:
        return _failure(rep, exc, "Restore")
    return report_restored(rep, spec, pv["metadata"]["name"], rec.id)


def register_class_roots(kube: Kube, volumes: SharedVolumes) -> list[str]:
    """Record the root of every ``type: shared`` StorageClass of our driver in this node's
    registry (keys returned). Classes that describe no valid root are skipped: the CSI
    plugin reports those on CreateVolume."""
    keys = []
    for sc in kube.list(STORAGE_CLASS):
        if sc.get("provisioner") != DRIVER or class_kind(sc) != "shared":
            continue
        with contextlib.suppress(InvalidArgument):
            keys.append(remember_root(volumes, {str(k): str(v) for k, v in
                                                (sc.get("parameters") or {}).items()}).key)
    return sorted(set(keys))
