"""BackupSchedule: when to run (cron, UTC), what to back up (PVC selector, or StatefulSets),
what to prune.

A PVC schedule puts its ``spec.retention`` on each VolumeBackup it creates; the agent that
runs the backup records the schedule as the backup's origin and then prunes the volume's
backups of this schedule only, deleting the VolumeBackups of those it removed
(:mod:`statehold.controller.pruning`): one decision, the repository's, for both. Here only
failed VolumeBackups (no data) are deleted: :func:`failed_to_prune`.

A schedule with ``spec.statefulSet`` (a set's name, or a selector of sets) creates one
StatefulSetBackup per set and slot instead of VolumeBackups, carrying the schedule's hooks,
freeze timeout and ``spec.retention`` (every rule: keepLast, the calendar ones and
keepWithin). The node agent that runs it records the schedule as the origin of the group
and its members, then prunes the set's groups of this schedule only, as units, and deletes
the StatefulSetBackups of those it removed (:mod:`statehold.controller.set_retention`).
Here, as for PVCs, only failed StatefulSetBackups (no data) are deleted.

Pure parts (:func:`parse_cron`, :func:`due`, :func:`to_prune`, :func:`backup_name`) are
table-tested with a fake clock; :func:`reconcile_schedule` is called by the cluster operator
on every change and on a timer. Missed runs (operator down) collapse into one run, as a
CronJob's do: backing up twice in a row gains nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from statehold.controller.backups import KEEP_LAST_ANNOTATION, PVC_LABEL, SCHEDULE_LABEL
from statehold.controller.problems import Problem, Result
from statehold.controller.pruning import RETENTION_ANNOTATION, describe, policy_from
from statehold.controller.report import Clock, Reporter
from statehold.controller.statefulsets import SET_LABEL
from statehold.controller.targets import resolve_target
from statehold.errors import AlreadyExists, InvalidArgument, NotFound
from statehold.kube import selectors
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PVC, STATEFUL_SET, STATEFUL_SET_BACKUP, VOLUME_BACKUP, Kind


def parse_cron(expr: str) -> str:
    """The expression if it is a valid five-field cron line; Problem(InvalidSchedule) if not."""
    fields = expr.split()
    if len(fields) != 5:
        raise Problem("InvalidSchedule", f"schedule {expr!r} must have five fields "
                      "(minute hour day-of-month month day-of-week)", permanent=True)
    try:
        croniter(expr, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError,
            KeyError) as exc:
        raise Problem("InvalidSchedule", f"schedule {expr!r} is not a valid cron expression: "
                      f"{exc}", permanent=True) from exc
    return expr


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Timing:
    run_at: datetime | None   # the slot to run now (None: nothing due)
    next_at: datetime          # the next slot after now


def due(expr: str, last: datetime, now: datetime) -> Timing:
    """The latest slot in (last, now] (if any) and the first slot after now."""
    it = croniter(expr, last)
    slot: datetime | None = None
    nxt: datetime = it.get_next(datetime)
    while nxt <= now:
        slot = nxt
        nxt = it.get_next(datetime)
    return Timing(slot, nxt)


def backup_name(schedule: str, pvc: str, slot: datetime) -> str:
    """Deterministic (a retried run creates nothing twice), DNS-1123, at most 253 chars."""
    stamp = slot.strftime("%Y%m%d%H%M")
    name = f"{schedule}-{pvc}-{stamp}"
    if len(name) > 253:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:253 - len(stamp) - 12]}-{digest}-{stamp}"
    return name


def to_prune(backups: list[dict[str, Any]], keep_last: int) -> list[str]:
    """Names of one PVC's schedule-made VolumeBackups to delete: completed ones beyond the
    newest keep_last; failed ones older than the oldest kept completed backup (they hold no
    data) and, so they cannot pile up when nothing ever completes, beyond the newest
    keep_last failed ones. Running and pending backups are never pruned."""
    def when(o: dict[str, Any]) -> str:
        st = o.get("status") or {}
        return str(st.get("completionTime") or o["metadata"].get("creationTimestamp") or "")

    def phase(o: dict[str, Any]) -> str:
        return str((o.get("status") or {}).get("phase", ""))

    done = sorted((b for b in backups if phase(b) == "Completed"), key=when, reverse=True)
    failed = sorted((b for b in backups if phase(b) == "Failed"), key=when, reverse=True)
    doomed = {b["metadata"]["name"] for b in done[keep_last:]}
    doomed |= {b["metadata"]["name"] for b in failed[keep_last:]}
    if done[:keep_last]:
        oldest_kept = when(done[:keep_last][-1])
        doomed |= {b["metadata"]["name"] for b in failed if when(b) < oldest_kept}
    return sorted(doomed)


FAILED_KEPT = 3
"""Failed VolumeBackups of one PVC a schedule keeps (the newest), while none completed
after them: they say why backups fail."""


def _when(o: dict[str, Any]) -> str:
    st = o.get("status") or {}
    return str(st.get("completionTime") or o["metadata"].get("creationTimestamp") or "")


def failed_to_prune(backups: list[dict[str, Any]], keep: int = FAILED_KEPT) -> list[str]:
    """Names of one PVC's schedule-made VolumeBackups that failed and may go: those older
    than the newest completed one (superseded), and beyond the newest ``keep`` failed
    ones. Completed ones are the agent's to prune (with their backups); running and
    pending ones are never pruned."""
    def phase(o: dict[str, Any]) -> str:
        return str((o.get("status") or {}).get("phase", ""))

    failed = sorted((b for b in backups if phase(b) == "Failed"), key=_when, reverse=True)
    newest_done = max((_when(b) for b in backups if phase(b) == "Completed"), default="")
    doomed = {b["metadata"]["name"] for b in failed[keep:]}
    doomed |= {b["metadata"]["name"] for b in failed if _when(b) < newest_done}
    return sorted(doomed)


def check_retention(spec: dict[str, Any]) -> dict[str, Any]:
    """The schedule's retention, checked: Problem(InvalidRetention) when it keeps nothing or
    does not parse. PVC and StatefulSet schedules take the same rules (a set's groups are
    judged by their manifests' time, format §9)."""
    doc = dict(spec.get("retention") or {"keepLast": 7})
    try:
        policy_from(doc)
    except InvalidArgument as exc:
        raise Problem("InvalidRetention", f"retention {describe(doc)}: {exc}",
                      permanent=True) from exc
    return doc


@dataclass(frozen=True, slots=True)
class Subjects:
    """What one schedule backs up: one VolumeBackup per PVC, or one StatefulSetBackup per
    StatefulSet, and the label that groups a subject's backups for pruning."""

    kind: Kind
    label: str
    names: list[str]

    def backup(self, schedule: Obj, subject: str, name: str, retention: dict[str, Any]) -> Obj:
        spec = schedule["spec"]
        meta = {"name": name, "namespace": schedule["metadata"]["namespace"],
                "labels": {SCHEDULE_LABEL: schedule["metadata"]["name"], self.label: subject},
                # no ownerReference: deleting a schedule must not delete the backups it
                # made (they are what a restore names)
                "annotations": {}}
        meta["annotations"][RETENTION_ANNOTATION] = json.dumps(
            retention, sort_keys=True, separators=(",", ":"))
        if self.kind == VOLUME_BACKUP:
            body: dict[str, Any] = {"persistentVolumeClaimName": subject, "target": spec["target"]}
        else:
            if set(retention) == {"keepLast"}:  # what agents before calendar rules read
                meta["annotations"][KEEP_LAST_ANNOTATION] = str(retention["keepLast"])
            sts = spec["statefulSet"]
            body = {"statefulSetName": subject, "target": spec["target"]}
            body.update({k: sts[k] for k in ("hooks", "freezeTimeoutSeconds") if k in sts})
        return {"apiVersion": self.kind.api_version, "kind": self.kind.kind, "metadata": meta,
                "spec": body}


def subjects(kube: Kube, namespace: str, spec: dict[str, Any]) -> Subjects:
    """The PVCs, or StatefulSets, the schedule selects now; Problem(InvalidSelector)."""
    sts = spec.get("statefulSet")
    try:
        if sts is None:
            selector = selectors.from_label_selector(spec["selector"])
            found = kube.list(PVC, namespace, label_selector=selector)
            return Subjects(VOLUME_BACKUP, PVC_LABEL, [o["metadata"]["name"] for o in found])
        if sts.get("name"):
            try:
                kube.get(STATEFUL_SET, sts["name"], namespace)
                names = [sts["name"]]
            except NotFound:
                names = []
        else:
            found = kube.list(STATEFUL_SET, namespace,
                              label_selector=selectors.from_label_selector(sts["selector"]))
            names = [o["metadata"]["name"] for o in found]
        return Subjects(STATEFUL_SET_BACKUP, SET_LABEL, names)
    except InvalidArgument as exc:
        raise Problem("InvalidSelector", str(exc), permanent=True) from exc


def reconcile_schedule(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    meta, spec = obj["metadata"], obj["spec"]
    ns, name = meta["namespace"], meta["name"]
    st = rep.status
    t = now()
    try:
        expr = parse_cron(spec["schedule"])
        retention = check_retention(spec)
        resolve_target(kube, ns, spec["target"])
        chosen = subjects(kube, ns, spec)
    except Problem as p:
        rep.update(condition=("Ready", False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return Result.failed(p.message) if p.permanent else Result.retry(p.message, p.retry_after)

    last = parse_time(st.get("lastScheduleTime")) or parse_time(meta.get("creationTimestamp")) or t
    timing = due(expr, last, t)
    fields: dict[str, Any] = {"nextScheduleTime": rfc3339(timing.next_at)}
    made = []
    if timing.run_at is not None and not spec.get("suspend"):
        for subject in chosen.names:
            backup = backup_name(name, subject, timing.run_at)
            try:
                kube.create(chosen.backup(obj, subject, backup, retention))
                made.append(backup)
            except AlreadyExists:
                pass
        fields.update(lastScheduleTime=rfc3339(timing.run_at))
        if made:
            fields["lastBackup"] = made[-1]
    elif timing.run_at is not None:
        fields.update(lastScheduleTime=rfc3339(timing.run_at))  # suspended: skip the slot

    pruned = []
    for subject in chosen.names:
        mine = kube.list(chosen.kind, ns, label_selector={SCHEDULE_LABEL: name,
                                                          chosen.label: subject})
        for doomed in failed_to_prune(mine):
            try:
                kube.delete(chosen.kind, doomed, ns)
                pruned.append(doomed)
            except NotFound:
                pass
    what = "PVC(s)" if chosen.kind == VOLUME_BACKUP else "StatefulSet(s)"
    message = f"next run {fields['nextScheduleTime']}; {len(chosen.names)} {what} selected"
    rep.update(fields, condition=("Ready", True, "Scheduled", message))
    if made:
        rep.event("Normal", "BackupsCreated", f"created {len(made)} {chosen.kind.kind}(s) for the "
                  f"{rfc3339(timing.run_at) if timing.run_at else ''} run: {', '.join(made)}")
    if pruned:
        rep.event("Normal", "Pruned", f"deleted {len(pruned)} failed {chosen.kind.kind}(s) (they "
                  f"hold no data): {', '.join(pruned)}")
    return Result()
