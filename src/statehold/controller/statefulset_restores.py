"""StatefulSetRestore: a group backup -> the claims a StatefulSet's controller adopts.

The claims are named exactly ``<template>-<set>-<ordinal>``, each bound ahead to a PV of a
volume restored from its member's backup (the VolumeRestore machinery of
:mod:`statehold.controller.restores`, per member), labelled as the set's controller labels
the claims it makes (the template's labels plus the set's ``selector.matchLabels``). A set
created (or scaled up) afterwards finds its claims and starts on the restored data.

The group backup is named either by a StatefulSetBackup of the same namespace
(``spec.backup``) or by its id and a BackupTarget of the restore's own namespace
(``spec.groupBackupId`` + ``spec.target``): another namespace or another cluster restores
from a repository it holds the password of, never from another namespace's target.

Cluster side (:func:`assign_set_restore`): the source exists, the class is a Statehold
local one, and (when a StatefulSetBackup says which claims) none of the claims exists ->
pin to a node. Node side (:func:`run_set_restore`): read the group manifest, refuse if a
claim with one of the names exists (condition ``ClaimsExist`` and a Warning Event, nothing
created), then restore each member: volume, PV, claim. Status records each member done,
so a retry resumes with the next.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from statehold.backup.groupmanifest import ClaimTemplate, GroupManifest, load_group
from statehold.backup.groupmanifest import Member as GroupMember
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository
from statehold.controller import backup_runner
from statehold.controller.backups import NODE_LABEL, not_yet_assigned, pin_to_node
from statehold.controller.claims import RESTORE_ANNOTATION
from statehold.controller.locate import DRIVER
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem
from statehold.controller.restores import choose_pool, local_pv, our_storage_class
from statehold.controller.shared_locate import class_kind, restore_kind
from statehold.controller.statefulsets import claim_name
from statehold.controller.targets import TargetConfig, resolve_target
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, VolumeMode
from statehold.errors import (
    AlreadyExists,
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
from statehold.kube.kinds import PVC, STATEFUL_SET_BACKUP, STATEFUL_SET_RESTORE, STORAGE_CLASS

FINAL = ("Completed", "Failed")
DEFAULT_CLASS = "statehold-local"
RESTORE_LABEL = "statehold.io/restore"


def member_uid(restore_uid: str, template: str, ordinal: int) -> str:
    """A stable uid per member: names its volume and PV (``pvc-<uid>``) and marks its claim."""
    return str(uuid.uuid5(uuid.UUID(restore_uid), f"{template}/{ordinal}"))


def existing_claims(kube: Kube, namespace: str, claims: list[tuple[str, str]]) -> list[str]:
    """Of (claim, member uid) pairs, the claims that exist and are not this restore's own."""
    taken = []
    for claim, uid in claims:
        try:
            got = kube.get(PVC, claim, namespace)
        except NotFound:
            continue
        if (got["metadata"].get("annotations") or {}).get(RESTORE_ANNOTATION) != uid:
            taken.append(claim)
    return taken


def claims_exist(namespace: str, taken: list[str]) -> Problem:
    return Problem("ClaimsExist", f"claim(s) {', '.join(taken)} already exist in {namespace}: a "
                   "StatefulSetRestore only creates new claims (delete them, restore into another "
                   "namespace, or give another statefulSetName)", permanent=True)


def wanted_ordinals(spec: dict[str, Any], available: list[int]) -> list[int]:
    """The ordinals to restore: spec.ordinals (each must be in the backup) or all."""
    asked = spec.get("ordinals")
    if not asked:
        return sorted(available)
    missing = sorted(set(int(o) for o in asked) - set(available))
    if missing:
        raise Problem("OrdinalNotInBackup", f"ordinal(s) {missing} are not in the group backup "
                      f"(it has {sorted(available)})", permanent=True)
    return sorted({int(o) for o in asked})


def _source_backup(kube: Kube, ns: str, name: str) -> Obj:
    try:
        ssb = kube.get(STATEFUL_SET_BACKUP, name, ns)
    except NotFound:
        raise Problem("BackupNotFound", f"StatefulSetBackup {ns}/{name} does not exist") from None
    st = ssb.get("status") or {}
    if st.get("phase") == "Failed":
        raise Problem("BackupFailed", f"StatefulSetBackup {name} failed; nothing to restore",
                      permanent=True)
    if st.get("phase") != "Completed" or not st.get("groupBackupId"):
        raise Problem("BackupNotReady", f"StatefulSetBackup {name} is not completed yet",
                      retry_after=30)
    return ssb


def _check_class(kube: Kube, name: str) -> Obj:
    sc = our_storage_class(kube, name)
    restore_kind("pool/volume", sc)  # a group member is an image: a local class only
    return sc


# -- cluster side ----------------------------------------------------------------------------

def assign_set_restore(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    meta, spec = obj["metadata"], obj["spec"]
    if rep.status.get("phase") in FINAL or (meta.get("labels") or {}).get(NODE_LABEL):
        return Result("skipped")
    ns = meta["namespace"]
    try:
        if spec.get("backup"):
            ssb = _source_backup(kube, ns, spec["backup"])
            sst = ssb["status"]
            target, group_id = ssb["spec"]["target"], sst["groupBackupId"]
            node = spec.get("node") or sst.get("node")
            set_name = spec.get("statefulSetName") or sst.get("statefulSet")
            members = [(int(m["ordinal"]), str(m["template"])) for m in sst.get("members") or []]
            ords = wanted_ordinals(spec, sorted({o for o, _ in members}))
            taken = existing_claims(kube, ns, [
                (claim_name(t, set_name, o), member_uid(meta["uid"], t, o))
                for o, t in members if o in ords])
            if taken:
                raise claims_exist(ns, taken)
        else:
            target, group_id, node = spec["target"], spec["groupBackupId"], spec.get("node")
            if not node:
                raise Problem("NoNode", "spec.node is needed with groupBackupId (the backup's "
                              "node may not be in this cluster)", permanent=True)
        resolve_target(kube, ns, target)
        if spec.get("storageClassName"):
            _check_class(kube, spec["storageClassName"])
        if not node:
            raise Problem("NoNode", "spec.node is not set and the backup names no node",
                          permanent=True)
    except Problem as p:
        return report_problem(rep, p)
    return pin_to_node(kube, rep, STATEFUL_SET_RESTORE, obj, node,
                       {"target": target, "groupBackupId": group_id},
                       scheduled=f"restoring group backup {group_id} on node {node}")


# -- node side -------------------------------------------------------------------------------

def run_set_restore(kube: Kube, obj: Obj, node: Node, node_name: str, now: Clock) -> Result:
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    meta, spec, st = obj["metadata"], obj["spec"], rep.status
    if st.get("phase") in FINAL or (meta.get("labels") or {}).get(NODE_LABEL) != node_name:
        return Result("skipped")
    if (wait := not_yet_assigned(obj, "groupBackupId")) is not None:
        return wait
    ns, group_id = meta["namespace"], str(st["groupBackupId"])
    try:
        target = resolve_target(kube, ns, str(st["target"]))
        repo = _open(target)
        try:
            group = load_group(repo, group_id)
        except NotFound as exc:
            raise Problem("GroupBackupNotFound", str(exc), permanent=True) from exc
        set_name = str(spec.get("statefulSetName") or group.set_name)
        ords = wanted_ordinals(spec, group.ordinals)
        chosen = [m for m in group.members if m.ordinal in ords]
        taken = existing_claims(kube, ns, [
            (claim_name(m.template, set_name, m.ordinal), member_uid(meta["uid"], m.template, m.ordinal))
            for m in chosen])
        if taken:
            raise claims_exist(ns, taken)
        manifests = {}
        for m in chosen:
            try:
                manifests[m.backup_id] = repo.load_manifest(m.backup_id)
            except NotFound as exc:
                raise Problem("MemberBackupMissing", f"member {m.claim} of group {group_id}: "
                              f"{exc} (forgotten or pruned on its own)", permanent=True) from exc
    except Problem as p:
        return report_problem(rep, p)
    except (Corrupt, PermissionDenied, InvalidArgument, FailedPrecondition) as exc:
        return report_problem(rep, Problem(type(exc).__name__, str(exc), permanent=True))
    except StateholdError as exc:
        return report_problem(rep, Problem("RestoreRetrying", str(exc), retry_after=30))
    if st.get("phase") != "Running":
        rep.event("Normal", "Started", f"restoring {len(chosen)} claim(s) of StatefulSet "
                  f"{set_name} from group backup {group_id} ({group.consistency}-consistent)")
    listed: list[dict[str, Any]] = [dict(m) for m in st.get("members") or []]
    rep.update({"phase": "Running", "startTime": st.get("startTime") or rfc3339(now()),
                "statefulSet": set_name, "members": listed},
               condition=("Ready", False, "Running", f"restoring group backup {group_id}"))
    done = {(int(m["ordinal"]), m["template"]) for m in listed if m.get("persistentVolumeName")}
    templates = {t.name: t for t in group.templates}
    for m in chosen:
        if (m.ordinal, m.template) in done:
            continue
        try:
            row = _restore_member(kube, obj, node, node_name, target, group, m,
                                  manifests[m.backup_id], templates.get(m.template), set_name)
        except Problem as p:
            return report_problem(rep, p, pending_phase="Running")
        except (InvalidArgument, PermissionDenied, Corrupt, NotFound) as exc:
            return report_problem(rep, Problem(type(exc).__name__, f"claim of {m.claim}: {exc}",
                                               permanent=True))
        except OutOfCapacity as exc:
            return report_problem(rep, Problem("NoCapacity", str(exc), retry_after=120),
                                  pending_phase="Running")
        except StateholdError as exc:
            return report_problem(rep, Problem("RestoreRetrying", f"claim of {m.claim}: {exc}",
                                               retry_after=30), pending_phase="Running")
        listed = [x for x in listed if (int(x["ordinal"]), x["template"]) != (m.ordinal, m.template)]
        listed.append(row)
        listed.sort(key=lambda x: (int(x["ordinal"]), str(x["template"])))
        rep.update({"members": listed})
        rep.event("Normal", "Restored", f"claim {row['claim']} bound to {row['volumeHandle']} "
                  f"(backup {m.backup_id})")
    claims = ", ".join(str(x["claim"]) for x in listed)
    rep.update({"phase": "Completed", "completionTime": rfc3339(now())},
               condition=("Ready", True, "Completed", f"claims {claims} restored"))
    rep.event("Normal", "Completed", f"StatefulSet {set_name}: {len(listed)} claim(s) restored "
              f"from group backup {group_id}; create or scale up the set to adopt them")
    return Result()


def _open(target: TargetConfig) -> Repository:
    """The target's repository, never created (a restore reads)."""
    try:
        return Repository.open(backup_runner.open_store(target), target.password)
    except NotFound as exc:
        raise Problem("RepositoryNotFound", f"{target.describe()}: {exc}", retry_after=300) from exc


def _find_volume(node: Node, name: str) -> Pool | None:
    for pool in node.pools():
        if any(v.name == name for v in pool.list_volumes()):
            return pool
    return None


def _restore_member(kube: Kube, obj: Obj, node: Node, node_name: str, target: TargetConfig,
                    group: GroupManifest, m: GroupMember, manifest: Manifest,
                    template: ClaimTemplate | None, set_name: str) -> dict[str, Any]:
    """One member: volume (created, filled, grown to the template's request), PV, claim."""
    meta, spec = obj["metadata"], obj["spec"]
    ns = meta["namespace"]
    uid = member_uid(meta["uid"], m.template, m.ordinal)
    claim = claim_name(m.template, set_name, m.ordinal)
    sc_name = spec.get("storageClassName") or _template_class(kube, template)
    sc = _check_class(kube, sc_name)
    mode = VolumeMode(manifest.labels.get("mode", VolumeMode.FILESYSTEM.value))
    fs = (manifest.labels.get("fs") or (sc.get("parameters") or {}).get(
        "csi.storage.k8s.io/fstype") or "xfs") if mode is VolumeMode.FILESYSTEM else ""
    requested = parse_size(template.storage) if template is not None and template.storage else 0
    wanted = max(manifest.size, requested)
    volume = f"pvc-{uid}"
    pool = _find_volume(node, volume)
    if pool is None:
        preferred = m.volume.partition("/")[0] if m.volume else None
        pool = node.pool(choose_pool([(p.name, p.capacity().allocatable) for p in node.pools()],
                                     wanted, preferred))
        pool.create_volume(volume, manifest.size, mode=mode,
                           fs=FsType(fs) if mode is VolumeMode.FILESYSTEM else None)
    try:
        restored = backup_runner.restore_into(target, m.backup_id, pool, volume)
    except BaseException:
        # a member restored but unrecorded is restored again; a failed one leaves no volume
        with contextlib.suppress(Exception):
            pool.delete_volume(volume)
        raise
    if mode is VolumeMode.FILESYSTEM:
        pool.is_formatted(volume)
    if wanted > pool.get_volume(volume).size:
        pool.expand(volume, wanted)
    size = pool.get_volume(volume).size
    handle = f"{pool.name}/{volume}"
    modes = list(template.access_modes) if template is not None else ["ReadWriteOnce"]
    volume_mode = "Block" if mode is VolumeMode.BLOCK else "Filesystem"
    pv = local_pv(uid, ns, claim, handle, size, fs, sc_name, node_name, modes,
                  volume_mode=volume_mode)
    labels = {**(dict(template.labels) if template is not None else {}), **dict(group.selector),
              RESTORE_LABEL: meta["name"]}
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": ns, "labels": labels,
                     "annotations": {RESTORE_ANNOTATION: uid}},
        "spec": {"accessModes": modes, "storageClassName": sc_name,
                 "volumeName": pv["metadata"]["name"], "volumeMode": volume_mode,
                 "resources": {"requests": {"storage": str(size)}}},
    }
    for made in (pv, pvc):  # either may exist from an earlier attempt
        with contextlib.suppress(AlreadyExists):
            kube.create(made)
    return {"ordinal": m.ordinal, "template": m.template, "claim": claim, "backupId": m.backup_id,
            "volumeHandle": handle, "persistentVolumeName": pv["metadata"]["name"],
            "bytesRestored": restored}


def _template_class(kube: Kube, template: ClaimTemplate | None) -> str:
    """The template's class when it is a Statehold local one (the set asks for it), else
    the default local class."""
    name = template.storage_class if template is not None else None
    if not name:
        return DEFAULT_CLASS
    try:
        sc = kube.get(STORAGE_CLASS, name)
    except NotFound:
        return DEFAULT_CLASS
    if sc.get("provisioner") != DRIVER or class_kind(sc) != "local":
        return DEFAULT_CLASS
    return str(name)
