"""The reconcilers against the in-memory API (with our CRD admission): bad input is
reported as a condition and an Event and creates nothing; schedules run on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.backups import NODE_LABEL, assign_backup
from statehold.controller.conditions import find
from statehold.controller.restores import assign_restore
from statehold.controller.schedules import reconcile_schedule
from statehold.controller.target_status import reconcile_target
from statehold.errors import InvalidArgument
from statehold.kube.kinds import BACKUP_SCHEDULE, BACKUP_TARGET, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import (
    NS,
    bound_pvc,
    path_target,
    secret,
    storage_class,
    volume_backup,
)


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), "Ready")
    assert cond is not None
    return cond


def warnings(kube: MemoryKube, obj: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in kube.events_for(obj) if e["type"] == "Warning"]


def schedule(kube: MemoryKube, cron: str = "0 3 * * *", keep: int = 2, **extra: Any) -> dict:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS},
                        "spec": {"schedule": cron, "target": "t", "retention": {"keepLast": keep},
                                 "selector": {"matchLabels": {"backup": "nightly"}}, **extra}})


# -- schema-level bad input (the API server refuses; so does the in-memory API) ------------

def test_negative_retention_is_refused_by_the_schema(memory_kube: MemoryKube) -> None:
    with pytest.raises(InvalidArgument, match="keepLast"):
        schedule(memory_kube, keep=-1)
    assert memory_kube.list(BACKUP_SCHEDULE, NS) == []


def test_unknown_target_type_is_refused_by_the_schema(memory_kube: MemoryKube) -> None:
    with pytest.raises(InvalidArgument, match="gcs"):
        memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                            "metadata": {"name": "t", "namespace": NS},
                            "spec": {"gcs": {"bucket": "b"}, "passwordSecretRef": {"name": "pw"}}})
    assert memory_kube.list(BACKUP_TARGET, NS) == []


# -- operator-level bad input --------------------------------------------------------------

def test_invalid_cron_gets_a_condition_and_event_and_creates_nothing(memory_kube: MemoryKube,
                                                                     fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data", labels={"backup": "nightly"})
    sch = schedule(memory_kube, cron="61 * * * *")
    fake_clock.advance(days=2)
    result = reconcile_schedule(memory_kube, sch, fake_clock)
    assert result.outcome == "failed"
    got = memory_kube.get(BACKUP_SCHEDULE, "nightly", NS)
    assert (ready(got)["status"], ready(got)["reason"]) == ("False", "InvalidSchedule")
    assert warnings(memory_kube, got) == ["InvalidSchedule"]
    assert memory_kube.list(VOLUME_BACKUP, NS) == []


def test_missing_secret_gets_a_condition_and_event_and_nothing_runs(memory_kube: MemoryKube,
                                                                    fake_clock: Any) -> None:
    target = path_target(memory_kube, password_secret="absent")
    bound_pvc(memory_kube, "data")
    assert reconcile_target(memory_kube, target, fake_clock).outcome == "retry"
    got = memory_kube.get(BACKUP_TARGET, "t", NS)
    assert ready(got)["reason"] == "SecretNotFound" and got["status"]["phase"] == "Pending"
    assert warnings(memory_kube, got) == ["SecretNotFound"]

    vb = volume_backup(memory_kube, "b1", "data")
    result = assign_backup(memory_kube, vb, fake_clock)
    assert result.outcome == "retry" and result.retry_after > 0
    got = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert ready(got)["reason"] == "SecretNotFound"
    assert NODE_LABEL not in (got["metadata"].get("labels") or {})
    assert warnings(memory_kube, got) == ["SecretNotFound"]

    secret(memory_kube, "absent", password="now-here")
    assert reconcile_target(memory_kube, target, fake_clock).outcome == "done"
    assert ready(memory_kube.get(BACKUP_TARGET, "t", NS))["status"] == "True"


def test_pvc_of_another_driver_fails_the_backup_with_a_reason(memory_kube: MemoryKube,
                                                             fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "ebs-data", driver="ebs.csi.aws.com")
    vb = volume_backup(memory_kube, "b1", "ebs-data")
    assert assign_backup(memory_kube, vb, fake_clock).outcome == "failed"
    got = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert got["status"]["phase"] == "Failed"
    assert ready(got)["reason"] == "UnsupportedDriver" and "ebs.csi.aws.com" in ready(got)["message"]
    assert warnings(memory_kube, got) == ["UnsupportedDriver"]
    assert NODE_LABEL not in (got["metadata"].get("labels") or {})


def test_missing_pvc_is_retried(memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    vb = volume_backup(memory_kube, "b1", "nope")
    assert assign_backup(memory_kube, vb, fake_clock).outcome == "retry"
    assert ready(memory_kube.get(VOLUME_BACKUP, "b1", NS))["reason"] == "PVCNotFound"


def test_backup_is_pinned_to_the_node_holding_the_volume(memory_kube: MemoryKube,
                                                         fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data", node="worker-7", pool="fast", volume="pvc-123", size="2Gi")
    vb = volume_backup(memory_kube, "b1", "data")
    assert assign_backup(memory_kube, vb, fake_clock).outcome == "done"
    got = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert got["metadata"]["labels"][NODE_LABEL] == "worker-7"
    assert (got["status"]["node"], got["status"]["volumeHandle"]) == ("worker-7", "fast/pvc-123")
    assert got["status"]["phase"] == "Pending"
    # idempotent: a second call changes nothing
    assert assign_backup(memory_kube, got, fake_clock).outcome == "skipped"


# -- schedules on a fake clock ---------------------------------------------------------------

def complete(kube: MemoryKube, name: str, when: str) -> None:
    kube.patch_status(VOLUME_BACKUP, name, {"phase": "Completed", "completionTime": when}, NS)


def test_schedule_creates_backups_on_time_and_prunes_by_retention(memory_kube: MemoryKube,
                                                                  fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data-0", labels={"backup": "nightly"})
    bound_pvc(memory_kube, "data-1", labels={"backup": "nightly"})
    bound_pvc(memory_kube, "other", labels={"backup": "weekly"})
    schedule(memory_kube, keep=2)  # created 2026-01-05 10:00 (fake clock)

    def run() -> list[str]:
        sch = memory_kube.get(BACKUP_SCHEDULE, "nightly", NS)
        assert reconcile_schedule(memory_kube, sch, fake_clock).outcome == "done"
        return sorted(o["metadata"]["name"] for o in memory_kube.list(VOLUME_BACKUP, NS))

    assert run() == []                              # 10:00, next slot tomorrow 03:00
    sch = memory_kube.get(BACKUP_SCHEDULE, "nightly", NS)
    assert sch["status"]["nextScheduleTime"] == "2026-01-06T03:00:00Z"
    fake_clock.advance(hours=17)                    # 2026-01-06 03:00
    assert run() == ["nightly-data-0-202601060300", "nightly-data-1-202601060300"]
    assert run() == ["nightly-data-0-202601060300", "nightly-data-1-202601060300"]  # idempotent
    made = memory_kube.get(VOLUME_BACKUP, "nightly-data-0-202601060300", NS)
    assert made["metadata"]["labels"]["statehold.io/schedule"] == "nightly"
    assert "ownerReferences" not in made["metadata"]  # deleting the schedule keeps backups
    # the retention goes with the backup: the agent prunes with it (controller/pruning.py)
    assert made["metadata"]["annotations"] == {"statehold.io/retention": '{"keepLast":2}'}

    for day in ("06", "07", "08"):
        for pvc in ("data-0", "data-1"):
            complete(memory_kube, f"nightly-{pvc}-202601{day}0300", f"2026-01-{day}T03:10:00Z")
        fake_clock.advance(days=1)
        names = run()
    # completed runs are the agent's to prune, with their backups: the operator keeps them all
    assert names == sorted(f"nightly-{p}-202601{d}0300" for p in ("data-0", "data-1")
                           for d in ("06", "07", "08", "09"))
    events = [e["reason"] for e in memory_kube.events_for(memory_kube.get(BACKUP_SCHEDULE, "nightly", NS))]
    assert "BackupsCreated" in events and "Pruned" not in events


def test_suspended_schedule_creates_nothing(memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data-0", labels={"backup": "nightly"})
    sch = schedule(memory_kube, suspend=True)
    fake_clock.advance(days=3)
    assert reconcile_schedule(memory_kube, sch, fake_clock).outcome == "done"
    assert memory_kube.list(VOLUME_BACKUP, NS) == []


# -- restores ------------------------------------------------------------------------------

def restore(kube: MemoryKube, backup: str = "b1", pvc: str = "restored", **extra: Any) -> dict:
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": backup, "persistentVolumeClaimName": pvc, **extra}})


def test_restore_into_an_existing_pvc_fails_and_creates_nothing(memory_kube: MemoryKube,
                                                                fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data")
    volume_backup(memory_kube, "b1", "data")
    complete(memory_kube, "b1", "2026-01-05T10:00:00Z")
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"backupId": "x", "node": "n1"}, NS)
    r = restore(memory_kube, pvc="data")
    assert assign_restore(memory_kube, r, fake_clock).outcome == "failed"
    got = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert ready(got)["reason"] == "PVCExists" and got["status"]["phase"] == "Failed"
    assert warnings(memory_kube, got) == ["PVCExists"]


def test_restore_waits_for_the_backup_then_goes_to_its_node(memory_kube: MemoryKube,
                                                            fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data")
    volume_backup(memory_kube, "b1", "data")
    r = restore(memory_kube)
    assert assign_restore(memory_kube, r, fake_clock).outcome == "retry"
    assert ready(memory_kube.get(VOLUME_RESTORE, "r1", NS))["reason"] == "BackupNotReady"
    complete(memory_kube, "b1", "2026-01-05T10:00:00Z")
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"backupId": "x", "node": "n9"}, NS)
    r = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert assign_restore(memory_kube, r, fake_clock).outcome == "done"
    assert memory_kube.get(VOLUME_RESTORE, "r1", NS)["metadata"]["labels"][NODE_LABEL] == "n9"


def test_restore_with_a_foreign_storage_class_fails(memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    storage_class(memory_kube, "gp3", provisioner="ebs.csi.aws.com")
    bound_pvc(memory_kube, "data")
    volume_backup(memory_kube, "b1", "data")
    complete(memory_kube, "b1", "2026-01-05T10:00:00Z")
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"backupId": "x", "node": "n1"}, NS)
    r = restore(memory_kube, storageClassName="gp3")
    assert assign_restore(memory_kube, r, fake_clock).outcome == "failed"
    assert ready(memory_kube.get(VOLUME_RESTORE, "r1", NS))["reason"] == "UnsupportedStorageClass"
