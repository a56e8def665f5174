"""The operator's metrics, scraped over HTTP after known reconciles against the in-memory API
(with our CRD admission) on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from statehold.controller import operator as op
from statehold.controller.backups import assign_backup
from statehold.controller.metrics import OperatorMetrics, missed_slots
from statehold.controller.schedules import reconcile_schedule
from statehold.kube.kinds import BACKUP_SCHEDULE, VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.fixtures.metrics import scrape, served, value
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, volume_backup


def schedule(kube: MemoryKube) -> dict[str, Any]:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS},
                        "spec": {"schedule": "0 3 * * *", "target": "t", "retention": {"keepLast": 2},
                                 "selector": {"matchLabels": {"backup": "nightly"}}}})


def test_a_failed_backup_increments_the_failure_counter(memory_kube: MemoryKube, fake_clock: Any) -> None:
    metrics = OperatorMetrics(memory_kube)
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "ebs-data", driver="ebs.csi.aws.com")
    volume_backup(memory_kube, "b1", "ebs-data")
    # through the operator's own kopf handler, as the cluster role registers it
    handle = op._handler(memory_kube, VOLUME_BACKUP, lambda o: assign_backup(memory_kube, o, fake_clock),
                         metrics=metrics)
    with served(metrics.registry) as url:
        before = scrape(url)
        with pytest.raises(kopf.PermanentError):  # the backup failed for good
            handle(name="b1", namespace=NS)
        after = scrape(url)
        handle(name="b1", namespace=NS)  # a final backup is skipped and not counted again
        again = scrape(url)
    assert value(before, "statehold_backups_total", result="failed") == 0
    assert value(after, "statehold_backups_total", result="failed") == 1
    assert value(again, "statehold_backups_total", result="failed") == 1
    assert value(after, "statehold_reconcile_total", kind="VolumeBackup", outcome="failed") == 1
    assert value(after, "statehold_reconcile_errors_total", kind="VolumeBackup") == 1
    assert value(again, "statehold_reconcile_total", kind="VolumeBackup", outcome="skipped") == 1
    assert value(after, "statehold_reconcile_seconds_count", kind="VolumeBackup") == 1


def test_a_completed_backup_counts_bytes_and_sets_the_claims_last_success(
        memory_kube: MemoryKube, fake_clock: Any) -> None:
    metrics = OperatorMetrics(memory_kube)
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data")
    volume_backup(memory_kube, "b1", "data")
    volume_backup(memory_kube, "b2", "data")

    def finish(obj: dict[str, Any]) -> Any:  # a stand-in for the node role's run_backup
        memory_kube.patch_status(VOLUME_BACKUP, obj["metadata"]["name"], {
            "phase": "Completed", "startTime": "2026-01-05T10:00:00Z",
            "completionTime": "2026-01-05T10:02:00Z", "bytesDone": 5000, "bytesUploaded": 1200}, NS)
        from statehold.controller.problems import Result
        return Result()

    counted = metrics.instrument(memory_kube, VOLUME_BACKUP, finish)
    counted(memory_kube.get(VOLUME_BACKUP, "b1", NS))
    with served(metrics.registry) as url:
        got = scrape(url)
    assert value(got, "statehold_backups_total", result="completed") == 1
    assert value(got, "statehold_backup_read_bytes_total") == 5000
    assert value(got, "statehold_backup_stored_bytes_total") == 1200
    assert value(got, "statehold_backup_duration_seconds_sum") == 120
    done = datetime(2026, 1, 5, 10, 2, tzinfo=UTC).timestamp()
    assert value(got, "statehold_backup_last_success_timestamp_seconds", volume=f"{NS}/data") == done
    off = OperatorMetrics(memory_kube, per_volume=False)
    assert b"last_success" not in off.exposition()


def test_slots_missed_while_the_operator_was_down_are_counted(memory_kube: MemoryKube,
                                                              fake_clock: Any) -> None:
    metrics = OperatorMetrics(memory_kube)
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data-0", labels={"backup": "nightly"})
    schedule(memory_kube)  # 03:00 daily; created 2026-01-05 10:00
    tick = op._each(memory_kube, BACKUP_SCHEDULE, lambda o: reconcile_schedule(memory_kube, o, fake_clock),
                    metrics=metrics)
    fake_clock.advance(hours=17)  # 2026-01-06 03:00: on time
    tick()
    fake_clock.advance(days=3)    # 07 and 08 pass unseen; 09 runs
    tick()
    with served(metrics.registry) as url:
        got = scrape(url)
    assert value(got, "statehold_schedule_misses_total", schedule=f"{NS}/nightly") == 2
    assert value(got, "statehold_reconcile_total", kind="BackupSchedule", outcome="done") == 2


def test_missed_slots_are_the_ones_strictly_between_two_runs() -> None:
    last = datetime(2026, 1, 6, 3, tzinfo=UTC)
    assert missed_slots("0 3 * * *", last, datetime(2026, 1, 7, 3, tzinfo=UTC)) == 0
    assert missed_slots("0 3 * * *", last, datetime(2026, 1, 9, 3, tzinfo=UTC)) == 2
