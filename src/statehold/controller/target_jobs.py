"""Jobs the operator asks of a node agent for a BackupTarget's repository, on the target's
own cron schedule: the cluster gc (:mod:`.target_gc`, ``spec.gc``) and the scheduled
verify (:mod:`.target_verify`, ``spec.verify``). Both are split the same way, so the
split lives here once:

* **Cluster side** (:func:`schedule`, the operator): when a slot of ``spec.<field>.schedule``
  is due (slots missed since the last one, or since the target was created when the job is
  added later, collapse into one) it chooses one node agent (:func:`candidate_nodes`: a
  node with a Ready StoragePool or our CSI driver; the same one while it stays) and writes
  the request into ``status.<field>``: ``phase: Pending``, ``node``, ``scheduledTime`` and
  the job's own fields. The operator cannot run it itself: a directory target is mounted
  on the nodes only. A slot that finds the previous run still Pending or Running is
  skipped, unless that run looks abandoned (:data:`PENDING_STALE`, :data:`RUNNING_STALE`):
  then it goes to a node again. A bad cron line (or a bad job field) or no node to run it
  goes into the job's condition and a Warning Event; the target itself stays usable.
* **Node side** (:func:`requested_pass`, every agent): the agent named by a Pending (or,
  after a restart, Running) request runs the job (:func:`attempt`) and writes its result
  into the same ``status.<field>``: Running while it runs; Pending again while the
  target's Secrets are missing (:func:`waiting`) or another holder has the repository's
  lock (tried at the next pass); Failed with a Warning Event (:func:`failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from statehold.controller.problems import Problem
from statehold.controller.report import Clock, Reporter
from statehold.controller.schedules import due, parse_cron, parse_time
from statehold.controller.shared_locate import choose_node, driver_nodes
from statehold.errors import Aborted, StateholdError
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import BACKUP_TARGET, CSI_NODE, STORAGE_POOL

PENDING_STALE = timedelta(minutes=10)
"""A request no agent has started for this long goes to a node again at the next slot."""
RUNNING_STALE = timedelta(hours=24)
"""A run reported Running for this long (its agent died mid-way) is requested again."""
ACTIVE = ("Pending", "Running")

Request = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], str]]
"""request(spec, status) -> (the job's own fields of a new request, words for its Event);
it may raise :class:`Problem` (a bad spec field), reported as a bad cron line is."""


def _no_fields(spec: dict[str, Any], st: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return {}, ""


@dataclass(frozen=True, slots=True)
class Job:
    """One kind of scheduled job: where it lives in the target and how it is reported."""

    field: str
    """``spec.<field>`` asks for it, ``status.<field>`` holds the request and the result."""
    condition: str
    """The target's condition that says whether the schedule is usable."""
    scheduled: str
    """Reason of the Normal Event when a slot is handed to a node."""
    failed: str
    """Reason of the Warning Event when a run fails."""
    request: Request = _no_fields

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"statehold.controller.{self.field}")

    def spec(self, obj: Obj) -> dict[str, Any]:
        return dict((obj.get("spec") or {}).get(self.field) or {})

    def status(self, obj: Obj) -> dict[str, Any]:
        return dict((obj.get("status") or {}).get(self.field) or {})


def candidate_nodes(kube: Kube) -> list[str]:
    """Nodes running an agent: a Ready StoragePool's node, or a CSINode with our driver."""
    pools = {str(p["spec"].get("node")) for p in kube.list(STORAGE_POOL)
             if (p.get("status") or {}).get("phase") == "Ready" and p["spec"].get("node")}
    return sorted(pools | set(driver_nodes(kube.list(CSI_NODE))))


def abandoned(st: dict[str, Any], now: datetime) -> bool:
    """A Pending request no agent took within :data:`PENDING_STALE`, or a run Running for
    longer than :data:`RUNNING_STALE` (its agent died): the next slot asks again."""
    if st.get("phase") == "Pending":
        asked = parse_time(st.get("scheduledTime"))
        return asked is None or now - asked > PENDING_STALE
    started = parse_time(st.get("startTime")) or parse_time(st.get("scheduledTime"))
    return started is None or now - started > RUNNING_STALE


def schedule(kube: Kube, rep: Reporter, job: Job) -> None:
    """Cluster side: note the next slot in ``status.<field>.nextScheduleTime``, and hand a
    due one to a node. Nothing without ``spec.<field>``."""
    obj = rep.obj
    spec = (obj.get("spec") or {}).get(job.field)
    if not spec:
        return
    st = job.status(obj)
    t = rep.now()
    try:
        expr = parse_cron(str(spec["schedule"]))
        extra, words = job.request(spec, st)
        last = (parse_time(st.get("lastScheduleTime"))
                or parse_time(obj["metadata"].get("creationTimestamp")) or t)
        timing = due(expr, last, t)
        fields: dict[str, Any] = {"nextScheduleTime": rfc3339(timing.next_at)}
        asked = None
        if timing.run_at is not None:
            fields["lastScheduleTime"] = rfc3339(timing.run_at)
            if st.get("phase") not in ACTIVE or abandoned(st, t):
                prefer = st.get("node") if st.get("phase") not in ACTIVE else None
                node = choose_node(obj["metadata"]["uid"], candidate_nodes(kube), prefer)
                asked = node
                fields.update(phase="Pending", node=node, scheduledTime=rfc3339(timing.run_at),
                              **extra, message=f"requested of the agent on {node}")
    except Problem as p:
        rep.update(condition=(job.condition, False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return
    rep.update({job.field: fields}, condition=(job.condition, True, "Scheduled",
                                               f"next run {fields['nextScheduleTime']}"))
    if asked:
        rep.event("Normal", job.scheduled, f"{job.field} of {obj['metadata']['name']}"
                  + (f" ({words})" if words else "") + f" requested of the agent on {asked}")


def tick_all(kube: Kube, now: Clock, job: Job) -> None:
    """:func:`schedule` for every BackupTarget with ``spec.<field>`` (the operator's periodic
    look; the checks of Secrets and repository run on changes); one failing does not stop
    the others."""
    for obj in kube.list(BACKUP_TARGET):
        if not (obj.get("spec") or {}).get(job.field):
            continue
        try:
            schedule(kube, Reporter(kube, obj, now), job)
        except StateholdError as exc:
            job.log.warning("%s schedule of %s/%s: %s", job.field, obj["metadata"].get("namespace"),
                            obj["metadata"]["name"], exc)


def requested_pass(kube: Kube, node_name: str, job: Job,
                   run: Callable[[Kube, Obj], str]) -> dict[str, str]:
    """Node side: run every job of this kind that the operator asked of this node; target
    -> outcome. One target failing (e.g. its status write) waits for the next pass."""
    done = {}
    for obj in kube.list(BACKUP_TARGET):
        st = job.status(obj)
        if st.get("node") == node_name and st.get("phase") in ACTIVE:
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            try:
                done[key] = run(kube, obj)
            except StateholdError as exc:
                job.log.warning("%s target=%s: %s", job.field, key, exc)
                done[key] = "Error"
    return done


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Ran(Generic[R]):
    """What a job's work returned, and how long it took (seconds, rounded to ms)."""

    value: R
    seconds: float


def waiting(rep: Reporter, job: Job, p: Problem) -> str:
    """The target cannot be used yet (e.g. its Secrets are missing): the request stays
    Pending, a Warning Event says why."""
    rep.update({job.field: {"phase": "Pending", "message": p.message}})
    rep.event("Warning", p.reason, p.message)
    return "Pending"


def failed(rep: Reporter, job: Job, now: Clock, message: str) -> str:
    """The run ended without a result: Failed, with a Warning Event of the job's reason."""
    rep.update({job.field: {"phase": "Failed", "completionTime": rfc3339(now()), "message": message}})
    rep.event("Warning", job.failed, message)
    return "Failed"


def attempt(rep: Reporter, job: Job, now: Clock, clock: Callable[[], float], target: str,
            running: str, work: Callable[[], R]) -> Ran[R] | str:
    """Node side: mark the run Running (``running`` as its message), then ``work()``. Its
    value and duration, or the outcome already written: ``Pending`` when another holder has
    the repository's lock (Aborted: the next pass tries again), ``Failed`` otherwise."""
    rep.update({job.field: {"phase": "Running", "startTime": rfc3339(now()), "message": running}})
    started = clock()
    try:
        value = work()
    except Aborted as exc:
        rep.update({job.field: {"phase": "Pending", "message": f"repository busy, retried: {exc}"}})
        return "Pending"
    except StateholdError as exc:
        return failed(rep, job, now, f"{job.field} of {target} failed: {exc}")
    return Ran(value, round(max(0.0, clock() - started), 3))
