"""Prometheus metrics of the operator (both roles), in a registry of their own.

Counted where the operator's handlers and tickers call the pure reconcilers
(:meth:`OperatorMetrics.instrument` wraps a ``Reconcile``), so no reconciler knows about
Prometheus; backups, restores and schedules are observed from the status a reconcile wrote
(the phase it moved to, the bytes and times it recorded), read back through the facade.

* ``statehold_reconcile_total{kind,outcome}`` (``done``/``retry``/``failed``/``skipped``/
  ``error``: an exception escaped), ``statehold_reconcile_errors_total{kind}`` (``failed``
  and ``error``), ``statehold_reconcile_seconds{kind}`` (histogram);
* ``statehold_backups_total{result}`` (``completed``/``failed``: a VolumeBackup reached that
  phase), ``statehold_backup_duration_seconds`` (histogram, start to completion),
  ``statehold_backup_read_bytes_total``, ``statehold_backup_stored_bytes_total`` (uploaded
  after deduplication);
* ``statehold_restores_total{result}``, ``statehold_restore_duration_seconds``,
  ``statehold_restore_bytes_total``;
* ``statehold_schedule_misses_total{schedule}``: slots of a BackupSchedule that were never
  run (the operator was down when they came due: missed runs collapse into one, see
  ``schedules.py``);
* ``statehold_backup_last_success_timestamp_seconds{volume}`` (``namespace/claim``): the
  completion time of the newest completed VolumeBackup of each claim, read from the
  VolumeBackups at scrape time (so it survives an operator restart); only with
  ``per_volume``;
* ``statehold_backup_verify_last_timestamp_seconds{target}`` and
  ``statehold_backup_verify_damaged_objects{target}`` (``namespace/name``): when the latest
  scheduled verify of a BackupTarget finished and the damaged objects it found, from the
  targets' ``status.verify`` at scrape time (:mod:`.target_verify`); only with ``per_volume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statehold.controller.problems import Result
from statehold.controller.target_verify import VerifyMetrics
from statehold.errors import StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import BACKUP_SCHEDULE, VOLUME_BACKUP, VOLUME_RESTORE, Kind

Reconcile = Callable[[Obj], Result]
FINAL = ("Completed", "Failed")
DURATIONS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
"""Backups and restores take seconds (a small incremental) to hours (a first full copy)."""


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def missed_slots(expr: str, last: datetime, run_at: datetime) -> int:
    """Cron slots strictly between ``last`` (the previous run) and ``run_at`` (this run)."""
    it = croniter(expr, last)
    missed = 0
    while True:
        slot: datetime = it.get_next(datetime)
        if slot >= run_at:
            return missed
        missed += 1


class _LastSuccess(Collector):
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("statehold_backup_last_success_timestamp_seconds",
                                   "Completion time of the newest completed backup of a claim",
                                   labels=["volume"])
        newest: dict[str, float] = {}
        try:
            backups = self._kube.list(VOLUME_BACKUP)
        except StateholdError:
            backups = []
        for vb in backups:
            st = vb.get("status") or {}
            done = parse_time(st.get("completionTime"))
            claim = (vb.get("spec") or {}).get("persistentVolumeClaimName")
            if st.get("phase") != "Completed" or done is None or not claim:
                continue
            key = f"{vb['metadata'].get('namespace', '')}/{claim}"
            newest[key] = max(newest.get(key, 0.0), done.timestamp())
        for key in sorted(newest):
            family.add_metric([key], newest[key])
        yield family


class OperatorMetrics:
    def __init__(self, kube: Kube | None = None, *, per_volume: bool = True) -> None:
        r = self.registry = CollectorRegistry()
        self.reconciles = Counter("statehold_reconcile", "Reconciles by kind and outcome",
                                  ["kind", "outcome"], registry=r)
        self.errors = Counter("statehold_reconcile_errors", "Reconciles that failed or raised",
                              ["kind"], registry=r)
        self.seconds = Histogram("statehold_reconcile_seconds", "Time one reconcile took",
                                 ["kind"], registry=r)
        self.backups = Counter("statehold_backups", "VolumeBackups finished, by result",
                               ["result"], registry=r)
        self.backup_seconds = Histogram("statehold_backup_duration_seconds", "Start to "
                                        "completion of a VolumeBackup", registry=r, buckets=DURATIONS)
        self.backup_read = Counter("statehold_backup_read_bytes", "Bytes backups read from volumes",
                                   registry=r)
        self.backup_stored = Counter("statehold_backup_stored_bytes", "Bytes backups uploaded to "
                                     "their repository (after deduplication)", registry=r)
        self.restores = Counter("statehold_restores", "VolumeRestores finished, by result",
                                ["result"], registry=r)
        self.restore_seconds = Histogram("statehold_restore_duration_seconds", "Start to "
                                         "completion of a VolumeRestore", registry=r,
                                         buckets=DURATIONS)
        self.restore_bytes = Counter("statehold_restore_bytes", "Bytes restores wrote", registry=r)
        self.misses = Counter("statehold_schedule_misses", "BackupSchedule slots never run",
                              ["schedule"], registry=r)
        for result in ("completed", "failed"):  # present from the first scrape
            self.backups.labels(result=result)
            self.restores.labels(result=result)
        if kube is not None and per_volume:
            r.register(_LastSuccess(kube))
            r.register(VerifyMetrics(kube))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def instrument(self, kube: Kube, kind: Kind, reconcile: Reconcile) -> Reconcile:
        """``reconcile``, counted and timed; a backup, restore or schedule is read back after
        it to see what the reconcile finished."""
        def counted(obj: Obj) -> Result:
            before = obj.get("status") or {}
            start = time.monotonic()
            try:
                result = reconcile(obj)
            except BaseException:
                self._count(kind, "error", time.monotonic() - start)
                raise
            self._count(kind, result.outcome, time.monotonic() - start)
            if kind in (VOLUME_BACKUP, VOLUME_RESTORE, BACKUP_SCHEDULE):
                meta = obj["metadata"]
                try:
                    after = kube.get(kind, meta["name"], meta.get("namespace")).get("status") or {}
                except StateholdError:
                    return result
                self._finished(kind, obj, before, after)
            return result

        return counted

    def _count(self, kind: Kind, outcome: str, seconds: float) -> None:
        self.reconciles.labels(kind=kind.kind, outcome=outcome).inc()
        if outcome in ("failed", "error"):
            self.errors.labels(kind=kind.kind).inc()
        self.seconds.labels(kind=kind.kind).observe(seconds)

    def _finished(self, kind: Kind, obj: Obj, before: dict[str, Any], after: dict[str, Any]) -> None:
        if kind == BACKUP_SCHEDULE:
            self._schedule(obj, before, after)
            return
        phase = after.get("phase")
        if before.get("phase") in FINAL or phase not in FINAL:
            return
        result = "completed" if phase == "Completed" else "failed"
        start, end = parse_time(after.get("startTime")), parse_time(after.get("completionTime"))
        took = (end - start).total_seconds() if start and end else None
        if kind == VOLUME_BACKUP:
            self.backups.labels(result=result).inc()
            if result == "completed":
                self.backup_read.inc(max(0, int(after.get("bytesDone") or 0)))
                self.backup_stored.inc(max(0, int(after.get("bytesUploaded") or 0)))
                if took is not None:
                    self.backup_seconds.observe(max(0.0, took))
        else:
            self.restores.labels(result=result).inc()
            if result == "completed":
                self.restore_bytes.inc(max(0, int(after.get("bytesRestored") or 0)))
                if took is not None:
                    self.restore_seconds.observe(max(0.0, took))

    def _schedule(self, obj: Obj, before: dict[str, Any], after: dict[str, Any]) -> None:
        last, ran = parse_time(before.get("lastScheduleTime")), parse_time(after.get("lastScheduleTime"))
        expr = (obj.get("spec") or {}).get("schedule")
        if last is None or ran is None or ran <= last or not isinstance(expr, str):
            return
        try:
            missed = missed_slots(expr, last, ran)
        except (ValueError, KeyError):
            return
        if missed:
            meta = obj["metadata"]
            self.misses.labels(schedule=f"{meta.get('namespace', '')}/{meta['name']}").inc(missed)


def serve(address: str, registry: CollectorRegistry) -> Callable[[], None]:
    """prometheus_client's HTTP server for ``registry`` on ``IP:PORT``; returns its stop.
    A busy or bad address is FailedPrecondition (the process exits rather than run blind)."""
    from prometheus_client import start_http_server

    from statehold.errors import FailedPrecondition, InvalidArgument

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"--metrics-address {address!r} must be IP:PORT")
    try:
        server, thread = start_http_server(int(port), host.strip("[]") or "127.0.0.1", registry=registry)
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve metrics on {address}: {exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
