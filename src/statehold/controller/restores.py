"""VolumeRestore: a VolumeBackup -> a new volume on a node -> a pre-bound PV and its PVC.

Cluster side (:func:`assign_restore`): the backup is Completed, the PVC name is free, the
StorageClass is ours -> pin to a node (``spec.node``, else the node the backup came from).
Node side (:func:`run_restore`): create the volume at the backup's size, restore into its
blank backing file, grow it to the requested size, then create the PV (annotated as
provisioned by our driver, so deleting the PVC deletes the volume) and the PVC bound to it.
Each step is recorded in status, so a retry resumes after the last one done.
"""

from __future__ import annotations

from typing import Any

from statehold.controller import backup_runner
from statehold.controller.backups import NODE_LABEL, not_yet_assigned, pin_to_node
from statehold.controller.claims import RESTORE_ANNOTATION, create_bound_pair
from statehold.controller.locate import DRIVER, TOPOLOGY_KEY
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem, report_restored
from statehold.controller.shared_backups import run_shared_restore
from statehold.controller.shared_locate import check_access_modes, handle_kind, restore_kind
from statehold.controller.targets import resolve_target
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.types import FsType
from statehold.errors import (
    Corrupt,
    InvalidArgument,
    NotFound,
    OutOfCapacity,
    PermissionDenied,
    StateholdError,
)
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PVC, STORAGE_CLASS, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.shared.service import SharedVolumes

FINAL = ("Completed", "Failed")


def choose_pool(pools: list[tuple[str, int]], size: int, preferred: str | None) -> str:
    """The pool to restore into: the preferred one if it has room, else the one with the
    most allocatable bytes; Problem(NoCapacity) when none has room. pools: (name, allocatable)."""
    fits = [(alloc, name) for name, alloc in pools if alloc >= size]
    if not fits:
        raise Problem("NoCapacity", f"no pool on this node has {size} bytes free", retry_after=120)
    if preferred and any(name == preferred for _, name in fits):
        return preferred
    return max(fits)[1]


def _backup_of(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    try:
        vb = kube.get(VOLUME_BACKUP, name, ns)
    except NotFound:
        raise Problem("BackupNotFound", f"VolumeBackup {ns}/{name} does not exist") from None
    phase = (vb.get("status") or {}).get("phase")
    if phase == "Failed":
        raise Problem("BackupFailed", f"VolumeBackup {name} failed; nothing to restore",
                      permanent=True)
    if phase != "Completed" or not vb["status"].get("backupId"):
        raise Problem("BackupNotReady", f"VolumeBackup {name} is not completed yet", retry_after=30)
    return vb


def our_storage_class(kube: Kube, name: str) -> Obj:
    """StorageClass ``name``, which must exist and be ours (a Problem otherwise)."""
    try:
        sc = kube.get(STORAGE_CLASS, name)
    except NotFound:
        raise Problem("StorageClassNotFound", f"StorageClass {name} does not exist") from None
    if sc.get("provisioner") != DRIVER:
        raise Problem("UnsupportedStorageClass", f"StorageClass {name} is provisioned by "
                      f"{sc.get('provisioner')}, not {DRIVER}", permanent=True)
    return sc


def assign_restore(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    meta, spec = obj["metadata"], obj["spec"]
    if rep.status.get("phase") in FINAL or (meta.get("labels") or {}).get(NODE_LABEL):
        return Result("skipped")
    ns = meta["namespace"]
    try:
        vb = _backup_of(kube, ns, spec["backup"])
        resolve_target(kube, ns, vb["spec"]["target"])
        try:
            pvc = kube.get(PVC, spec["persistentVolumeClaimName"], ns)
            if (pvc["metadata"].get("annotations") or {}).get(RESTORE_ANNOTATION) != meta["uid"]:
                raise Problem("PVCExists", f"PVC {ns}/{spec['persistentVolumeClaimName']} already "
                              "exists; restore into a new name", permanent=True)
        except NotFound:
            pass
        sc = our_storage_class(kube, spec.get("storageClassName", "statehold-local"))
        # a file-tree backup of a shared volume into a shared class, an image into a local one
        kind = restore_kind(str((vb.get("status") or {}).get("volumeHandle", "")), sc)
        check_access_modes(spec.get("accessModes") or [], kind)
        node = spec.get("node") or (vb.get("status") or {}).get("node")
        if not node:
            raise Problem("NoNode", "spec.node is not set and the backup names no node",
                          permanent=True)
    except Problem as p:
        return report_problem(rep, p)
    return pin_to_node(kube, rep, VOLUME_RESTORE, obj, node, {},
                       scheduled=f"restoring {spec['backup']} on node {node}")


def local_pv(uid: str, namespace: str, claim: str, handle: str, size: int, fs: str, sc: str,
             node: str, modes: list[str], *, volume_mode: str = "Filesystem") -> dict[str, Any]:
    """The PV of a restored local volume, named ``pvc-<uid>`` and bound ahead to ``claim``
    (a VolumeRestore's, or one member's of a StatefulSetRestore)."""
    csi: dict[str, Any] = {"driver": DRIVER, "volumeHandle": handle,
                           "volumeAttributes": {"statehold.io/type": "local"}}
    if volume_mode == "Filesystem":
        csi["fsType"] = fs
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{uid}", "annotations": {
            "pv.kubernetes.io/provisioned-by": DRIVER, RESTORE_ANNOTATION: uid}},
        "spec": {
            "capacity": {"storage": str(size)},
            "accessModes": list(modes),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": sc, "volumeMode": volume_mode,
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": namespace, "name": claim},
            "csi": csi,
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}},
        },
    }


def _pv(obj: Obj, pvc_name: str, handle: str, size: int, fs: str, sc: str,
        node: str) -> dict[str, Any]:
    meta, spec = obj["metadata"], obj["spec"]
    return local_pv(meta["uid"], meta["namespace"], pvc_name, handle, size, fs, sc, node,
                    list(spec.get("accessModes") or ["ReadWriteOnce"]))


def run_restore(kube: Kube, obj: Obj, node: Node, node_name: str, now: Clock,
                shared: SharedVolumes | None = None) -> Result:
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    meta, spec, st = obj["metadata"], obj["spec"], rep.status
    if st.get("phase") in FINAL or (meta.get("labels") or {}).get(NODE_LABEL) != node_name:
        return Result("skipped")
    if (wait := not_yet_assigned(obj, "node")) is not None:
        return wait
    ns = meta["namespace"]
    sc_name = spec.get("storageClassName", "statehold-local")
    try:
        vb = _backup_of(kube, ns, spec["backup"])
    except Problem as p:
        return report_problem(rep, p)
    if handle_kind(str(vb["status"].get("volumeHandle", ""))) == "shared":
        if shared is None:
            return report_problem(rep, Problem("SharedUnavailable", "this agent has no shared "
                                               "backend", permanent=True))
        return run_shared_restore(kube, obj, vb, shared, node_name, now)
    try:
        target = resolve_target(kube, ns, vb["spec"]["target"])
        sc = kube.get(STORAGE_CLASS, sc_name)
        restore_kind(str(vb["status"].get("volumeHandle", "")), sc)
        fs = (sc.get("parameters") or {}).get("csi.storage.k8s.io/fstype", "xfs")
        backup_id = vb["status"]["backupId"]
        rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now())},
                   condition=("Ready", False, "Running", f"restoring backup {backup_id}"))
        handle = st.get("volumeHandle")
        volume = f"pvc-{meta['uid']}"
        if not handle:
            size = backup_runner.backup_size(target, backup_id)
            wanted = parse_size(str(spec["size"])) if spec.get("size") else size
            if wanted < size:
                raise Problem("SizeTooSmall", f"size {wanted} is smaller than the backup "
                              f"({size} bytes)", permanent=True)
            preferred = str((vb.get("status") or {}).get("volumeHandle", "")).partition("/")[0]
            pool = node.pool(choose_pool([(p.name, p.capacity().allocatable) for p in node.pools()],
                                         wanted, preferred))
            vol = pool.create_volume(volume, size, fs=FsType(fs))
            restored = backup_runner.restore_into(target, backup_id, pool, volume)
            pool.is_formatted(volume)
            if wanted > vol.size:
                pool.expand(volume, wanted)
            handle = f"{pool.name}/{volume}"
            rep.update({"volumeHandle": handle, "bytesRestored": restored})
            rep.event("Normal", "Restored", f"backup {backup_id} restored into volume {handle}")
        pool = node.pool(handle.partition("/")[0])
        size = pool.get_volume(volume).size
        pv = _pv(obj, spec["persistentVolumeClaimName"], handle, size, fs, sc_name, node_name)
        create_bound_pair(kube, obj, pv, sc_name, list(spec.get("accessModes") or ["ReadWriteOnce"]))
    except Problem as p:
        return report_problem(rep, p)
    except (InvalidArgument, PermissionDenied, Corrupt, NotFound) as exc:
        return report_problem(rep, Problem(type(exc).__name__, str(exc), permanent=True))
    except OutOfCapacity as exc:
        return report_problem(rep, Problem("NoCapacity", str(exc), retry_after=120),
                              pending_phase="Running")
    except StateholdError as exc:
        return report_problem(rep, Problem("RestoreRetrying", str(exc), retry_after=30),
                              pending_phase="Running")
    return report_restored(rep, spec, pv["metadata"]["name"], handle)
