"""A schedule's retention, applied by the agent that ran the backup: the repository's
decision is the only one, and the VolumeBackup objects follow it.

A BackupSchedule puts its ``spec.retention`` on every VolumeBackup it creates
(:data:`RETENTION_ANNOTATION`) and its name in the ``statehold.io/schedule`` label. The
backup records the origin ``schedule/<namespace>/<name>`` in its manifest (format §6.2);
once it is Completed, the agent prunes the volume's backups **of that origin only** (a
backup made by hand, or by another schedule, is never judged), then deletes the
VolumeBackups whose backup the prune removed, and those of the same schedule, volume and
target whose backup is gone from the repository (a prune cut short between the two steps,
or a backup forgotten by hand). The VolumeBackup's ``Retention`` condition records the
outcome: a busy repository (a gc or another prune holds the exclusive lock) is retried in
:data:`RETRY` seconds, not left to the next backup.

The operator no longer deletes completed VolumeBackups on its own (its count and the
repository's could disagree); it deletes only failed ones, which hold no data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from statehold.backup.collecting import PruneResult, prune
from statehold.backup.repository import Repository, manifest_key, quarantine_key
from statehold.backup.retention import Policy, parse_duration
from statehold.controller import backup_runner
from statehold.controller.conditions import find
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Reporter
from statehold.controller.targets import TargetConfig
from statehold.errors import InvalidArgument, NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import VOLUME_BACKUP

log = logging.getLogger("statehold.controller.pruning")

SCHEDULE_LABEL = "statehold.io/schedule"
RETENTION_ANNOTATION = "statehold.io/retention"
"""The schedule's ``spec.retention`` (compact JSON) on each VolumeBackup it creates."""
KEEP_LAST_ANNOTATION = "statehold.io/keep-last"
"""What operators before :data:`RETENTION_ANNOTATION` wrote (and StatefulSetBackups still
carry): a keepLast count."""
CONDITION = "Retention"
RETRY = 30.0
FIELDS = {"keepLast": "keep_last", "keepHourly": "hourly", "keepDaily": "daily",
          "keepWeekly": "weekly", "keepMonthly": "monthly", "keepYearly": "yearly"}
"""CRD field -> retention Policy field (keepWithin is a duration, read apart)."""


def policy_from(doc: Mapping[str, Any]) -> Policy:
    """The engine's policy for a schedule's ``spec.retention``; InvalidArgument when it
    keeps nothing or a field is malformed."""
    unknown = set(doc) - set(FIELDS) - {"keepWithin"}
    if unknown:
        raise InvalidArgument(f"retention has unknown fields: {', '.join(sorted(unknown))}")
    try:
        counts = {FIELDS[k]: int(v) for k, v in doc.items() if k in FIELDS}
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"retention counts must be whole numbers: {exc}") from exc
    within = parse_duration(str(doc["keepWithin"])) if doc.get("keepWithin") else 0.0
    policy = Policy(**counts, within=within)
    policy.check()
    return policy


def describe(doc: Mapping[str, Any]) -> str:
    """``keepLast=7, keepDaily=14`` for messages."""
    return ", ".join(f"{k}={doc[k]}" for k in sorted(doc)) or "nothing"


def origin_of(obj: Obj) -> str:
    """Who made this VolumeBackup's backup: ``schedule/<ns>/<name>`` for a schedule's,
    ``""`` for one made by hand (format §6.2)."""
    meta = obj["metadata"]
    schedule = (meta.get("labels") or {}).get(SCHEDULE_LABEL)
    return f"schedule/{meta['namespace']}/{schedule}" if schedule else ""


def retention_doc(obj: Obj) -> dict[str, Any] | None:
    """The retention this VolumeBackup carries, as the schedule's spec wrote it; None for
    none. Problem(InvalidRetention) when the annotation does not parse."""
    ann = obj["metadata"].get("annotations") or {}
    raw = ann.get(RETENTION_ANNOTATION)
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise Problem("InvalidRetention", f"annotation {RETENTION_ANNOTATION} is not JSON: "
                          f"{exc}", permanent=True) from exc
        if not isinstance(doc, dict):
            raise Problem("InvalidRetention", f"annotation {RETENTION_ANNOTATION} must be an "
                          "object", permanent=True)
        return doc
    keep = str(ann.get(KEEP_LAST_ANNOTATION) or "0")
    return {"keepLast": int(keep)} if keep.isdigit() and int(keep) > 0 else None


def pending(obj: Obj) -> bool:
    """A Completed VolumeBackup whose retention has not been applied yet (the prune was
    deferred, or the agent stopped between the backup and the prune)."""
    st = obj.get("status") or {}
    if st.get("phase") != "Completed" or not st.get("backupId"):
        return False
    if not (obj["metadata"].get("annotations") or {}).get(RETENTION_ANNOTATION):
        return False
    cond = find(st.get("conditions"), CONDITION)
    return cond is None or cond.get("status") != "True"


def apply_retention(kube: Kube, rep: Reporter, target: TargetConfig, volume: str) -> Result:
    """After a Completed backup: prune ``volume``'s backups of the object's origin in the
    target's repository by the object's retention, then delete the VolumeBackups whose
    backup is gone. Nothing to do without a retention."""
    obj = rep.obj
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
        return Result()  # the backup itself is good; nothing to retry until the spec changes
    origin = origin_of(obj)
    try:
        repo = backup_runner.open_repository(target)
        result = prune(repo, policy, volume=volume, origin=origin)
    except StateholdError as exc:  # Aborted (gc or another prune), Unavailable
        message = f"prune of {volume} in {target.describe()} deferred: {exc}"
        rep.update(condition=(CONDITION, False, "PruneDeferred", message))
        return Result.retry(message, RETRY)
    deleted = drop_gone(kube, obj, repo, result, volume)
    who = origin or "made by hand"
    rep.update(condition=(CONDITION, True, "Applied",
                          f"{describe(doc)}: kept {len(result.kept)} backup(s) of {volume} "
                          f"({who}), removed {len(result.removed)}"))
    if result.removed or deleted:
        rep.event("Normal", "Pruned", f"{describe(doc)}: removed {len(result.removed)} backup(s) "
                  f"of {volume} ({who}) from {target.describe()}"
                  + (f": {', '.join(result.removed)}" if result.removed else "")
                  + (f"; deleted VolumeBackup(s) {', '.join(deleted)}" if deleted else "")
                  + "; their chunks go at the repository's next gc")
    return Result()


def _stamp(backup_id: str) -> str:
    """The UTC second a backup id starts with (``YYYYmmddTHHMMSSZ``), sortable as text."""
    return backup_id[:16]


def drop_gone(kube: Kube, obj: Obj, repo: Repository, result: PruneResult,
              volume: str) -> list[str]:
    """Delete the VolumeBackups of the same origin, target and volume as ``obj`` whose
    backup the prune removed, or whose backup is no longer in the repository though it is
    older than a kept one (so not one committed after the prune looked). A backup that
    cannot be read (quarantined) still exists: its object stays."""
    meta = obj["metadata"]
    ns = meta["namespace"]
    schedule = (meta.get("labels") or {}).get(SCHEDULE_LABEL)
    if schedule:
        candidates = kube.list(VOLUME_BACKUP, ns, label_selector={SCHEDULE_LABEL: schedule})
    else:
        candidates = [o for o in kube.list(VOLUME_BACKUP, ns)
                      if SCHEDULE_LABEL not in (o["metadata"].get("labels") or {})]
    removed = set(result.removed)
    judged = removed | set(result.kept) | {d.backup_id for d in result.damaged}
    newest_kept = max((_stamp(b) for b in result.kept), default="")
    deleted = []
    for o in candidates:
        st = o.get("status") or {}
        bid = str(st.get("backupId") or "")
        if (o["metadata"]["name"] == meta["name"] or st.get("phase") != "Completed" or not bid
                or st.get("volumeHandle") != volume or o["spec"].get("target") != obj["spec"]["target"]):
            continue
        if bid not in removed:
            try:
                if bid in judged or not _stamp(bid) < newest_kept or _exists(repo, bid):
                    continue
            except StateholdError as exc:  # unreachable: keep the object, look next time
                log.warning("retention could not check backup %s: %s", bid, exc)
                continue
        try:
            kube.delete(VOLUME_BACKUP, o["metadata"]["name"], ns)
        except NotFound:
            continue
        deleted.append(o["metadata"]["name"])
        log.info("retention deleted VolumeBackup %s/%s (backup %s is gone)", ns,
                 o["metadata"]["name"], bid)
    return sorted(deleted)


def _exists(repo: Repository, backup_id: str) -> bool:
    key = manifest_key(backup_id)
    return repo.store.exists(key) or repo.store.exists(quarantine_key(key))
