"""BackupSchedule: when to run (cron, UTC), what to back up (PVC selector), what to prune.

Pure parts (:func:`parse_cron`, :func:`due`, :func:`to_prune`, :func:`backup_name`) are
table-tested with a fake clock; :func:`reconcile_schedule` is called by the cluster operator
on every change and on a timer. Missed runs (operator down) collapse into one run, as a
CronJob's do: backing up twice in a row gains nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from statehold.controller.backups import KEEP_LAST_ANNOTATION, PVC_LABEL, SCHEDULE_LABEL
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter
from statehold.controller.targets import resolve_target
from statehold.errors import AlreadyExists, InvalidArgument, NotFound
from statehold.kube import selectors
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PVC, VOLUME_BACKUP


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


def reconcile_schedule(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    meta, spec = obj["metadata"], obj["spec"]
    ns, name = meta["namespace"], meta["name"]
    st = rep.status
    t = now()
    try:
        expr = parse_cron(spec["schedule"])
        resolve_target(kube, ns, spec["target"])
        try:
            selector = selectors.from_label_selector(spec["selector"])
        except InvalidArgument as exc:
            raise Problem("InvalidSelector", str(exc), permanent=True) from exc
    except Problem as p:
        rep.update(condition=("Ready", False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return Result.failed(p.message) if p.permanent else Result.retry(p.message, p.retry_after)

    last = parse_time(st.get("lastScheduleTime")) or parse_time(meta.get("creationTimestamp")) or t
    timing = due(expr, last, t)
    fields: dict[str, Any] = {"nextScheduleTime": rfc3339(timing.next_at)}
    keep = int((spec.get("retention") or {}).get("keepLast", 7))
    pvcs = kube.list(PVC, ns, label_selector=selector)
    made = []
    if timing.run_at is not None and not spec.get("suspend"):
        for pvc in pvcs:
            pvc_name = pvc["metadata"]["name"]
            vb = backup_name(name, pvc_name, timing.run_at)
            try:
                kube.create({
                    "apiVersion": VOLUME_BACKUP.api_version, "kind": VOLUME_BACKUP.kind,
                    "metadata": {
                        "name": vb, "namespace": ns,
                        "labels": {SCHEDULE_LABEL: name, PVC_LABEL: pvc_name},
                        # no ownerReference: deleting a schedule must not delete the
                        # backups it made (they are what a VolumeRestore names)
                        "annotations": {KEEP_LAST_ANNOTATION: str(keep)}},
                    "spec": {"persistentVolumeClaimName": pvc_name, "target": spec["target"]}})
                made.append(vb)
            except AlreadyExists:
                pass
        fields.update(lastScheduleTime=rfc3339(timing.run_at))
        if made:
            fields["lastBackup"] = made[-1]
    elif timing.run_at is not None:
        fields.update(lastScheduleTime=rfc3339(timing.run_at))  # suspended: skip the slot

    pruned = []
    for pvc in pvcs:
        pvc_name = pvc["metadata"]["name"]
        mine = kube.list(VOLUME_BACKUP, ns, label_selector={SCHEDULE_LABEL: name,
                                                            PVC_LABEL: pvc_name})
        for doomed in to_prune(mine, keep):
            try:
                kube.delete(VOLUME_BACKUP, doomed, ns)
                pruned.append(doomed)
            except NotFound:
                pass
    message = f"next run {fields['nextScheduleTime']}; {len(pvcs)} PVC(s) selected"
    rep.update(fields, condition=("Ready", True, "Scheduled", message))
    if made:
        rep.event("Normal", "BackupsCreated", f"created {len(made)} VolumeBackup(s) for the "
                  f"{rfc3339(timing.run_at) if timing.run_at else ''} run: {', '.join(made)}")
    if pruned:
        rep.event("Normal", "Pruned", f"deleted {len(pruned)} VolumeBackup(s) beyond keepLast="
                  f"{keep}: {', '.join(pruned)}")
    return Result()
