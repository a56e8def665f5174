"""Garbage collection of a BackupTarget's repository in the cluster (``spec.gc``).

Pruning and forgetting remove manifests; the chunks only they named stay until a gc
deletes them (format §9). In a cluster, gc runs on the target's own cron schedule:

* **Cluster side** (:func:`schedule_gc`, the operator, on a change of the target and every
  30 s; :func:`.target_jobs.schedule`, shared with the scheduled verify): when a slot is
  due (slots missed since the last one, or since the target was created when ``spec.gc``
  is added later, collapse into one), it chooses one node agent (a node with a Ready
  StoragePool or our CSI driver, the same one while it stays) and writes the request into
  ``status.gc``: ``phase: Pending``, ``node``, ``scheduledTime``. The operator cannot do it
  itself: a directory target is mounted on the nodes only. A slot that finds the previous
  run still Pending or Running is skipped, unless that run looks abandoned
  (:data:`.target_jobs.PENDING_STALE`, :data:`.target_jobs.RUNNING_STALE`): then it goes to
  a node again.
* **Node side** (:func:`gc_pass`, every agent, every 30 s): the agent named by a Pending
  (or, after a restart, Running) request runs :func:`statehold.backup.collecting.gc`,
  which holds the repository's exclusive lock, so it never runs beside a backup, a
  restore, a prune or another gc. A busy repository leaves the request Pending, tried
  again at the next pass. The result (bytes and chunks freed, duration, what was kept and
  why) goes into ``status.gc`` and a ``GarbageCollected`` Event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from statehold.backup.collecting import GcResult
from statehold.controller import backup_runner, target_jobs
from statehold.controller.problems import Problem
from statehold.controller.report import Clock, Reporter
from statehold.controller.target_jobs import Job
from statehold.controller.targets import TargetConfig, target_from
from statehold.errors import NotFound
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj

log = logging.getLogger("statehold.controller.gc")

GC = Job("gc", "GarbageCollection", "GarbageCollectionScheduled", "GarbageCollectionFailed")
"""Where the cluster gc lives in a BackupTarget and how its schedule is reported."""


def schedule_gc(kube: Kube, rep: Reporter) -> None:
    """Cluster side: note the next slot, and hand a due one to a node. Problems (a bad cron
    line, no node to run it) go into the ``GarbageCollection`` condition and an Event; the
    target itself stays usable."""
    target_jobs.schedule(kube, rep, GC)


def tick(kube: Kube, obj: Obj, now: Clock) -> None:
    """The operator's periodic look at one target: only the gc schedule (the checks of
    Secrets and repository run on changes)."""
    if (obj.get("spec") or {}).get("gc"):
        schedule_gc(kube, Reporter(kube, obj, now))


def tick_all(kube: Kube, now: Clock) -> None:
    """:func:`tick` for every BackupTarget; one failing does not stop the others."""
    target_jobs.tick_all(kube, now, GC)


# -- node side --------------------------------------------------------------------------------

def gc_pass(kube: Kube, node_name: str, now: Clock,
            clock: Callable[[], float] = time.monotonic) -> dict[str, str]:
    """Run every gc requested of this node; target -> outcome."""
    return target_jobs.requested_pass(kube, node_name, GC,
                                      lambda k, obj: run_gc(k, obj, node_name, now, clock))


def run_gc(kube: Kube, obj: Obj, node_name: str, now: Clock,
           clock: Callable[[], float] = time.monotonic) -> str:
    """Collect the target's repository; the outcome (``Completed``, ``Pending`` when busy
    or the target's Secrets are missing, ``Failed``) is written into ``status.gc``."""
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    name = obj["metadata"]["name"]
    spec = GC.spec(obj)
    grace = float(spec.get("graceSeconds", 3600))
    try:
        target = target_from(kube, obj)
    except Problem as p:
        return target_jobs.waiting(rep, GC, p)
    # Aborted: a backup, restore, prune or gc holds the repository
    ran = target_jobs.attempt(rep, GC, now, clock, target.describe(), f"collecting {target.describe()}",
                              lambda: collect(target, grace))
    if isinstance(ran, str):
        return ran
    result, took = ran.value, ran.seconds
    damaged = len(result.damaged) if result else 0
    fields: dict[str, Any] = {
        "phase": "Completed", "completionTime": rfc3339(now()), "durationSeconds": took,
        "bytesFreed": result.bytes_deleted if result else 0,
        "chunksDeleted": result.chunks_deleted if result else 0,
        "chunksTotal": result.chunks_total if result else 0,
        "chunksReferenced": result.chunks_referenced if result else 0,
        "chunksInGrace": result.chunks_in_grace if result else 0,
        "chunksKeptUnknown": result.chunks_kept_unknown if result else 0,
        "damagedBackups": damaged,
        "message": (f"freed {result.bytes_deleted} bytes ({result.chunks_deleted} chunks) in "
                    f"{took:.1f} s" if result else "no repository yet: nothing to collect")}
    rep.update({"gc": fields})
    rep.event("Normal", "GarbageCollected", f"{target.describe()}: {fields['message']}"
              + (f"; {result.chunks_in_grace} unreferenced chunk(s) younger than "
                 f"{grace:.0f} s kept" if result and result.chunks_in_grace else ""))
    if result and result.damaged:
        rep.event("Warning", "DamagedBackups", f"{target.describe()}: gc deleted no chunk: "
                  f"{damaged} backup(s) cannot be read "
                  f"({', '.join(d.backup_id for d in result.damaged[:5])}); `statehold backup "
                  "forget` of each lets the next gc collect")
    log.info("gc target=%s/%s freed=%s seconds=%s", obj["metadata"]["namespace"], name,
             fields["bytesFreed"], took)
    return "Completed"


def collect(target: TargetConfig, grace: float) -> GcResult | None:
    """gc of the target's repository; None when there is no repository yet."""
    try:
        return backup_runner.collect_garbage(target, grace=grace)
    except NotFound:
        return None
