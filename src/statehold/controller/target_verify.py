"""Scheduled verification of a BackupTarget's repository in the cluster (``spec.verify``).

A backup that cannot be restored is found when it is needed, unless something reads the
repository before. ``spec.verify: {schedule, readDataSubset}`` runs ``backup verify`` on
the target's own cron schedule, split like the cluster gc (:mod:`.target_gc`):

* **Cluster side** (:func:`schedule_verify`, the operator, every 30 s, through
  :func:`.target_jobs.schedule` as the gc's): a due slot (missed
  slots collapse into one) picks one node agent (a node with a Ready StoragePool or our
  CSI driver; the same one while it stays) and writes the request into ``status.verify``:
  ``phase: Pending``, ``node``, ``scheduledTime``, and the ``subset`` this run reads. A
  slot that finds the previous run still Pending or Running is skipped unless that run
  looks abandoned.
* **Node side** (:func:`verify_pass`, every agent, every 30 s): the agent named by the
  request runs :func:`statehold.backup.verifying.verify` under the repository's **shared**
  lock, so it runs beside backups and restores and only waits for an exclusive holder
  (prune, gc, migrate): then the request stays Pending and is tried at the next pass. The
  result (objects and bytes read, the damage found with the backups it breaks, duration)
  goes into ``status.verify`` and an Event: ``Verified`` (Normal) or ``VerifyFailed``
  (Warning, naming the damaged objects).

``readDataSubset`` (optional; without it only the quick checks run): ``N%`` reads a fresh
random N percent of the packs each run (the seed is recorded, so a run can be repeated by
hand with ``backup verify --read-data-subset N% --seed S``); ``n/m`` reads slice ``n`` at
the first run and the next slice at each run after (``status.verify.nextSlice``), so ``m``
runs read every pack once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statehold.backup.repository import Repository
from statehold.backup.sampling import Subset
from statehold.backup.verifying import VerifyReport, verify
from statehold.controller import backup_runner, target_jobs
from statehold.controller.problems import Problem
from statehold.controller.report import Clock, Reporter
from statehold.controller.schedules import parse_time
from statehold.controller.target_jobs import Job
from statehold.controller.targets import TargetConfig, target_from
from statehold.errors import InvalidArgument, NotFound, StateholdError
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import BACKUP_TARGET

log = logging.getLogger("statehold.controller.verify")

MAX_DAMAGE = 20
"""Damaged objects listed in the status (all are counted in ``problems``)."""
MAX_DETAIL = 300


def subset_for_run(spec: dict[str, Any], st: dict[str, Any]) -> str:
    """The subset the next run reads: a percentage as given; for ``n/m`` the slice after
    the previous run's (``nextSlice``), starting at ``n``. Empty: quick checks only."""
    text = str(spec.get("readDataSubset") or "").strip()
    if not text:
        return ""
    try:
        subset = Subset.parse(text)
    except InvalidArgument as exc:
        raise Problem("InvalidSubset", f"spec.verify.readDataSubset: {exc}", permanent=True) from exc
    if not subset.parts:
        return text
    nxt = st.get("nextSlice")
    part = int(nxt) if isinstance(nxt, int) and 1 <= nxt <= subset.parts else subset.part
    return f"{part}/{subset.parts}"


def _request(spec: dict[str, Any], st: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A request's own field: the ``subset`` its run reads (and the Event's words)."""
    subset = subset_for_run(spec, st)
    return {"subset": subset}, f"read data subset {subset}" if subset else ""


VERIFY = Job("verify", "Verification", "VerifyScheduled", "VerifyFailed", _request)
"""Where the scheduled verify lives in a BackupTarget and how its schedule is reported."""


def schedule_verify(kube: Kube, rep: Reporter) -> None:
    """Cluster side: note the next slot, and hand a due one to a node. A bad cron line, a
    bad subset or no node to run it go into the ``Verification`` condition and an Event."""
    target_jobs.schedule(kube, rep, VERIFY)


def tick_all(kube: Kube, now: Clock) -> None:
    """:func:`schedule_verify` for every BackupTarget with ``spec.verify``; one failing does
    not stop the others."""
    target_jobs.tick_all(kube, now, VERIFY)


# -- node side --------------------------------------------------------------------------------

def verify_pass(kube: Kube, node_name: str, now: Clock,
                clock: Callable[[], float] = time.monotonic) -> dict[str, str]:
    """Run every verify requested of this node; target -> outcome."""
    return target_jobs.requested_pass(kube, node_name, VERIFY,
                                      lambda k, obj: run_verify(k, obj, node_name, now, clock))


def run_verify(kube: Kube, obj: Obj, node_name: str, now: Clock,
               clock: Callable[[], float] = time.monotonic) -> str:
    """Verify the target's repository; the outcome (``Completed``, ``Pending`` when an
    exclusive holder has it or the Secrets are missing, ``Failed`` when it could not be
    read at all) goes into ``status.verify``, damage into a ``VerifyFailed`` Event."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    st = VERIFY.status(obj)
    spec = VERIFY.spec(obj)
    try:
        target = target_from(kube, obj)
        text = str(st.get("subset") or "")
        subset = Subset.parse(text).resolved() if text else None
    except Problem as p:
        return target_jobs.waiting(rep, VERIFY, p)
    except InvalidArgument as exc:
        return target_jobs.failed(rep, VERIFY, now, f"status.verify.subset {text!r}: {exc}")
    # Aborted: prune, gc or migrate holds the repository exclusively
    ran = target_jobs.attempt(rep, VERIFY, now, clock, target.describe(), f"verifying {target.describe()}"
                              + (f", reading {subset.describe()}" if subset else ""),
                              lambda: check(target, subset))
    if isinstance(ran, str):
        return ran
    report, took = ran.value, ran.seconds
    fields = result_fields(report, took)
    fields.update(phase="Completed", completionTime=rfc3339(now()), node=node_name)
    fields["nextSlice"] = _next_slice(spec, subset)
    rep.update({"verify": fields})
    name = target.describe()
    if report is None or report.ok:
        rep.event("Normal", "Verified", f"{name}: {fields['message']}")
    else:
        named = "; ".join(f"{p.what} {p.name} ({p.detail[:160]})" for p in report.problems[:5])
        more = len(report.problems) - 5
        rep.event("Warning", "VerifyFailed", f"{name}: {len(report.problems)} damaged object(s): "
                  f"{named}{f' and {more} more' if more > 0 else ''}; affected backups: "
                  f"{', '.join(report.affected()[:10]) or 'none'}")
    log.info("verify target=%s/%s outcome=%s problems=%s seconds=%s", obj["metadata"]["namespace"],
             obj["metadata"]["name"], fields["outcome"], fields["problems"], took)
    return "Completed"


def _next_slice(spec: dict[str, Any], subset: Subset | None) -> int | None:
    """After slice n of m, slice n+1 (m wraps to 1); None for a percentage or none."""
    if subset is None or not subset.parts:
        return None
    return subset.part % subset.parts + 1


def result_fields(report: VerifyReport | None, took: float) -> dict[str, Any]:
    """``status.verify`` fields of a finished run (None: no repository yet)."""
    if report is None:
        return {"outcome": "Clean", "durationSeconds": took, "backups": 0, "problems": 0,
                "damage": [], "damagedBackups": [], "bytesChecked": 0,
                "message": "no repository yet: nothing to verify"}
    sampled = report.subset
    fields: dict[str, Any] = {
        "outcome": "Clean" if report.ok else "Damaged", "durationSeconds": took,
        "backups": report.backups, "chunks": report.chunks, "bytesChecked": report.bytes_checked,
        "problems": len(report.problems),
        "damage": [{"what": p.what, "name": p.name, "detail": p.detail[:MAX_DETAIL],
                    "backups": list(p.backups[:10])} for p in report.problems[:MAX_DAMAGE]],
        "damagedBackups": report.affected()[:100]}
    if sampled is not None:
        fields.update(subset=sampled.subset, objects=sampled.objects, objectsTotal=sampled.total,
                      objectsRead=sampled.read, bytesRead=sampled.bytes_read)
    read = (f"; read {sampled.read} of {sampled.total} {sampled.objects} ({sampled.bytes_read} "
            f"bytes, subset {sampled.subset})" if sampled else "")
    fields["message"] = (f"{report.backups} backups, {report.chunks} chunks{read}: "
                         + ("ok" if report.ok else f"{len(report.problems)} damaged object(s)")
                         + f" in {took:.1f} s")
    return fields


def check(target: TargetConfig, subset: Subset | None) -> VerifyReport | None:
    """Verify the target's repository (shared lock); None when there is none yet."""
    try:
        repo = Repository.open(backup_runner.open_store(target), target.password)
    except NotFound:
        return None
    return verify(repo, subset=subset)


class VerifyMetrics(Collector):
    """``statehold_backup_verify_last_timestamp_seconds{target}`` (completion of the latest
    finished verify) and ``statehold_backup_verify_damaged_objects{target}`` (what it found),
    read from the BackupTargets' status at each scrape."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def collect(self) -> Iterator[Metric]:
        when = GaugeMetricFamily("statehold_backup_verify_last_timestamp_seconds",
                                 "Completion time of a BackupTarget's latest finished verify",
                                 labels=["target"])
        damaged = GaugeMetricFamily("statehold_backup_verify_damaged_objects",
                                    "Damaged objects the latest verify of a BackupTarget found",
                                    labels=["target"])
        try:
            targets = self._kube.list(BACKUP_TARGET)
        except StateholdError:
            targets = []
        for t in targets:
            st = VERIFY.status(t)
            done = parse_time(st.get("completionTime"))
            if done is None or st.get("outcome") not in ("Clean", "Damaged"):
                continue
            key = f"{t['metadata'].get('namespace', '')}/{t['metadata']['name']}"
            when.add_metric([key], done.timestamp())
            damaged.add_metric([key], float(st.get("problems") or 0))
        yield when
        yield damaged
