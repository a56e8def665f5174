"""A StatefulSet schedule's retention, applied by the agent that ran the group backup: the
repository decides on groups (format §9), and the StatefulSetBackups follow it.

A BackupSchedule with ``spec.statefulSet`` puts its ``spec.retention`` (every rule a PVC
schedule has: keepLast, keepHourly..keepYearly, keepWithin) on each StatefulSetBackup it
creates (:data:`~statehold.controller.pruning.RETENTION_ANNOTATION`). The group manifest
and every member backup record the schedule as their origin, so once the group backup is
Completed the agent prunes **that set's groups of that origin only**: each group is judged
by its manifest's time and removed with all its members, never a member alone. Then it
deletes the StatefulSetBackups of the same schedule, set and target whose group the prune
removed, or whose group is gone from the repository though older than a kept one (a prune
cut short, or a group forgotten by hand). The ``Retention`` condition records the outcome;
a busy repository is retried in :data:`~statehold.controller.pruning.RETRY` seconds.
"""

from __future__ import annotations

import logging

from statehold.backup.collecting import PruneResult, prune
from statehold.backup.groupmanifest import group_key
from statehold.backup.repository import Repository
from statehold.controller import backup_runner
from statehold.controller.conditions import find
from statehold.controller.problems import Problem, Result
from statehold.controller.pruning import (
    CONDITION,
    RETENTION_ANNOTATION,
    RETRY,
    SCHEDULE_LABEL,
    describe,
    origin_of,
    policy_from,
    retention_doc,
)
from statehold.controller.report import Reporter
from statehold.controller.statefulsets import SET_LABEL
from statehold.controller.targets import TargetConfig
from statehold.errors import InvalidArgument, NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import STATEFUL_SET_BACKUP

log = logging.getLogger("statehold.controller.set_retention")


def pending(obj: Obj) -> bool:
    """A Completed StatefulSetBackup whose retention has not been applied yet (deferred, or
    the agent stopped between the group manifest and the prune)."""
    st = obj.get("status") or {}
    if st.get("phase") != "Completed" or not st.get("groupBackupId"):
        return False
    if not (obj["metadata"].get("annotations") or {}).get(RETENTION_ANNOTATION):
        return False
    cond = find(st.get("conditions"), CONDITION)
    return cond is None or cond.get("status") != "True"


def apply_set_retention(kube: Kube, rep: Reporter, target: TargetConfig) -> Result:
    """Prune the set's groups of the object's origin by the object's retention, then delete
    the StatefulSetBackups whose group is gone. Nothing to do without a retention."""
    obj = rep.obj
    ns, set_name = obj["metadata"]["namespace"], str((obj.get("status") or {})["statefulSet"])
    try:
        doc = retention_doc(obj)
        if doc is None:
            return Result()
        try:
            policy = policy_from(doc)
        except InvalidArgument as exc:
            raise Problem("InvalidRetention", f"retention {describe(doc)}: {exc}",
                          permanent=True) from exc
    except Problem as p:
        rep.update(condition=(CONDITION, False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return Result()  # the group backup itself is good
    origin = origin_of(obj)
    try:
        repo = backup_runner.open_repository(target)
        result = prune(repo, policy, statefulset=(ns, set_name), origin=origin)
    except StateholdError as exc:  # Aborted (gc or another prune), Unavailable
        message = f"prune of StatefulSet {ns}/{set_name}'s groups in {target.describe()} deferred: {exc}"
        rep.update(condition=(CONDITION, False, "PruneDeferred", message))
        return Result.retry(message, RETRY)
    deleted = drop_gone(kube, obj, repo, result)
    who = origin or "made by hand"
    removed = sorted(result.groups_removed)
    members = sum(len(m) for m in result.groups_removed.values())
    rep.update(condition=(CONDITION, True, "Applied",
                          f"{describe(doc)}: kept {len(result.groups_kept)} group backup(s) of "
                          f"{set_name} ({who}), removed {len(removed)}"))
    if removed or result.removed or deleted:
        rep.event("Normal", "Pruned", f"{describe(doc)}: removed {len(removed)} group backup(s) of "
                  f"{set_name} ({who}) with their {members} member backup(s) from "
                  f"{target.describe()}" + (f": {', '.join(removed)}" if removed else "")
                  + (f"; {len(result.removed)} member backup(s) no group names"
                     if result.removed else "")
                  + (f"; deleted StatefulSetBackup(s) {', '.join(deleted)}" if deleted else "")
                  + "; their chunks go at the repository's next gc")
    if result.groups_unreadable:
        rep.event("Warning", "DamagedBackups", f"{target.describe()} holds group manifests that "
                  f"cannot be read: {', '.join(result.groups_unreadable)}; no backup that may be "
                  "theirs was pruned")
    return Result()


def drop_gone(kube: Kube, obj: Obj, repo: Repository, result: PruneResult) -> list[str]:
    """Delete the StatefulSetBackups of the same origin, set and target as ``obj`` whose
    group the prune removed, or whose group manifest is no longer in the repository though
    it is older than a kept group (so not one written after the prune looked)."""
    meta = obj["metadata"]
    ns, set_name = meta["namespace"], str(obj["status"]["statefulSet"])
    schedule = (meta.get("labels") or {}).get(SCHEDULE_LABEL)
    candidates = [o for o in kube.list(STATEFUL_SET_BACKUP, ns, label_selector={SET_LABEL: set_name})
                  if (o["metadata"].get("labels") or {}).get(SCHEDULE_LABEL) == schedule]
    removed = set(result.groups_removed)
    judged = removed | set(result.groups_kept) | set(result.groups_unreadable)
    newest_kept = max((g[:16] for g in result.groups_kept), default="")
    deleted = []
    for o in candidates:
        st = o.get("status") or {}
        gid = str(st.get("groupBackupId") or "")
        if (o["metadata"]["name"] == meta["name"] or st.get("phase") != "Completed" or not gid
                or o["spec"].get("target") != obj["spec"]["target"]):
            continue
        if gid not in removed:
            try:
                if gid in judged or not gid[:16] < newest_kept or repo.store.exists(group_key(gid)):
                    continue
            except StateholdError as exc:  # unreachable: keep the object, look next time
                log.warning("retention could not check group %s: %s", gid, exc)
                continue
        try:
            kube.delete(STATEFUL_SET_BACKUP, o["metadata"]["name"], ns)
        except NotFound:
            continue
        except StateholdError as exc:  # e.g. a chart without the node's delete: next time
            log.warning("retention could not delete StatefulSetBackup %s/%s: %s", ns,
                        o["metadata"]["name"], exc)
            continue
        deleted.append(o["metadata"]["name"])
        log.info("retention deleted StatefulSetBackup %s/%s (group %s is gone)", ns,
                 o["metadata"]["name"], gid)
    return sorted(deleted)
