"""The cluster side of retention and gc against the in-memory API with our CRD admission:
what the schemas admit (calendar rules, keepWithin, no empty policy, spec.gc), what a
schedule hands its VolumeBackups, which failed ones it deletes (only those), and how the
operator hands a due gc to one node agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.retention import Policy
from statehold.controller.conditions import find
from statehold.controller.pruning import origin_of, pending, policy_from, retention_doc
from statehold.controller.schedules import failed_to_prune, reconcile_schedule
from statehold.controller.target_gc import gc_pass, tick
from statehold.controller.target_jobs import candidate_nodes
from statehold.controller.target_status import reconcile_target
from statehold.errors import InvalidArgument
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    STATEFUL_SET_BACKUP,
    STORAGE_POOL,
    VOLUME_BACKUP,
)
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret


def schedule(kube: MemoryKube, retention: dict[str, Any] | None = None, **extra: Any) -> dict:
    spec: dict[str, Any] = {"schedule": "0 3 * * *", "target": "t", **extra}
    spec.setdefault("selector", {"matchLabels": {"backup": "nightly"}})
    if retention is not None:
        spec["retention"] = retention
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS}, "spec": spec})


CALENDAR = {"keepLast": 2, "keepHourly": 24, "keepDaily": 7, "keepWeekly": 4, "keepMonthly": 12,
            "keepYearly": 3, "keepWithin": "2w3d"}


def test_calendar_retention_is_admitted_and_becomes_the_engines_policy(memory_kube: MemoryKube) -> None:
    got = schedule(memory_kube, CALENDAR)
    assert got["spec"]["retention"] == CALENDAR  # nothing defaulted in beside it
    assert policy_from(CALENDAR) == Policy(keep_last=2, hourly=24, daily=7, weekly=4, monthly=12,
                                           yearly=3, within=17 * 86400.0)


def test_a_schedule_without_retention_keeps_the_last_seven(memory_kube: MemoryKube) -> None:
    assert schedule(memory_kube)["spec"]["retention"] == {"keepLast": 7}


def test_only_daily_retention_is_not_widened_by_a_default_keep_last(memory_kube: MemoryKube) -> None:
    assert schedule(memory_kube, {"keepDaily": 3})["spec"]["retention"] == {"keepDaily": 3}


@pytest.mark.parametrize(("retention", "why"), [
    ({}, "retention"),                       # keeps nothing: refused, never "delete all"
    ({"keepDaily": 0}, "minimum"),
    ({"keepWithin": "14"}, "does not match"),
    ({"keepWithin": "1y"}, "does not match"),
    ({"keepMonthly": -1}, "minimum"),
    ({"keepForever": True}, "keepForever"),
])
def test_bad_retention_is_refused_by_the_schema(memory_kube: MemoryKube, retention: dict,
                                                why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        schedule(memory_kube, retention)
    assert memory_kube.list(BACKUP_SCHEDULE, NS) == []


def test_a_statefulset_schedule_takes_calendar_rules_and_carries_them(
        memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    memory_kube.create({"apiVersion": "apps/v1", "kind": "StatefulSet",
                        "metadata": {"name": "pg", "namespace": NS}, "spec": {"replicas": 1}})
    sch = memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                              "metadata": {"name": "nightly", "namespace": NS},
                              "spec": {"schedule": "0 3 * * *", "target": "t",
                                       "statefulSet": {"name": "pg"},
                                       "retention": {"keepDaily": 7, "keepWithin": "2d"}}})
    fake_clock.advance(days=1)
    assert reconcile_schedule(memory_kube, sch, fake_clock).outcome == "done"
    got = memory_kube.get(BACKUP_SCHEDULE, "nightly", NS)
    assert find(got["status"]["conditions"], "Ready")["status"] == "True"
    (made,) = memory_kube.list(STATEFUL_SET_BACKUP, NS)
    assert retention_doc(made) == {"keepDaily": 7, "keepWithin": "2d"}
    assert origin_of(made) == f"schedule/{NS}/nightly"
    assert "statehold.io/keep-last" not in made["metadata"]["annotations"]  # not keepLast only


def test_each_scheduled_volume_backup_carries_the_retention_and_its_origin(
        memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data", labels={"backup": "nightly"})
    sch = schedule(memory_kube, CALENDAR)
    fake_clock.advance(hours=17)
    assert reconcile_schedule(memory_kube, sch, fake_clock).outcome == "done"
    (made,) = memory_kube.list(VOLUME_BACKUP, NS)
    assert json.loads(made["metadata"]["annotations"]["statehold.io/retention"]) == CALENDAR
    assert retention_doc(made) == CALENDAR
    assert origin_of(made) == f"schedule/{NS}/nightly"
    manual = memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                                 "metadata": {"name": "by-hand", "namespace": NS},
                                 "spec": {"persistentVolumeClaimName": "data", "target": "t"}})
    assert origin_of(manual) == "" and retention_doc(manual) is None


def test_an_older_operators_keep_last_annotation_is_still_honoured() -> None:
    obj = {"metadata": {"name": "x", "namespace": NS, "annotations": {"statehold.io/keep-last": "3"}}}
    assert retention_doc(obj) == {"keepLast": 3}


def test_retention_is_pending_until_applied() -> None:
    obj: dict[str, Any] = {"metadata": {"name": "x", "namespace": NS, "annotations": {
        "statehold.io/retention": '{"keepLast":1}'}}, "status": {"phase": "Running"}}
    assert not pending(obj)
    obj["status"] = {"phase": "Completed", "backupId": "20260101T000000Z-00000000"}
    assert pending(obj)
    obj["status"]["conditions"] = [{"type": "Retention", "status": "False", "reason": "PruneDeferred"}]
    assert pending(obj)
    obj["status"]["conditions"] = [{"type": "Retention", "status": "True", "reason": "Applied"}]
    assert not pending(obj)


def vb(name: str, phase: str, done: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": done or "2026-01-01T00:00:00Z"},
            "status": {"phase": phase, "completionTime": done}}


@pytest.mark.parametrize(("backups", "pruned"), [
    ([], []),
    # completed ones are never the operator's to delete, however many
    ([vb(f"c{i}", "Completed", f"2026-01-0{i}T03:00:00Z") for i in range(1, 10)], []),
    ([vb("f", "Failed", "2026-01-01T03:00:00Z"), vb("c", "Completed", "2026-01-02T03:00:00Z")], ["f"]),
    ([vb("c", "Completed", "2026-01-02T03:00:00Z"), vb("f", "Failed", "2026-01-03T03:00:00Z")], []),
    ([vb("f1", "Failed", "2026-01-01T03:00:00Z"), vb("f2", "Failed", "2026-01-02T03:00:00Z"),
      vb("f3", "Failed", "2026-01-03T03:00:00Z"), vb("f4", "Failed", "2026-01-04T03:00:00Z")], ["f1"]),
    ([vb("r", "Running"), vb("p", "Pending"), vb("f", "Failed", "2026-01-01T03:00:00Z")], []),
])
def test_the_operator_deletes_only_failed_volume_backups(backups: list, pruned: list[str]) -> None:
    assert failed_to_prune(backups) == pruned


# -- gc: the cluster side -----------------------------------------------------------------------

def pool(kube: MemoryKube, node: str, phase: str = "Ready") -> None:
    kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                 "metadata": {"name": f"{node}-pool"},
                 "spec": {"node": node, "directory": "/var/tmp/x", "imageSize": "1Gi"}})
    kube.patch_status(STORAGE_POOL, f"{node}-pool", {"phase": phase})


def gc_target(kube: MemoryKube, gc: dict[str, Any] | None, path: str = "/var/tmp/none") -> dict[str, Any]:
    spec: dict[str, Any] = {"path": {"path": path}, "passwordSecretRef": {"name": "pw"}}
    if gc is not None:
        spec["gc"] = gc
    return kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                        "metadata": {"name": "t", "namespace": NS}, "spec": spec})


def test_gc_settings_are_admitted_with_a_default_grace(memory_kube: MemoryKube) -> None:
    got = gc_target(memory_kube, {"schedule": "0 4 * * 0"})
    assert got["spec"]["gc"] == {"schedule": "0 4 * * 0", "graceSeconds": 3600}
    memory_kube.delete(BACKUP_TARGET, "t", NS)
    with pytest.raises(InvalidArgument, match="minimum"):
        gc_target(memory_kube, {"schedule": "0 4 * * 0", "graceSeconds": -1})
    with pytest.raises(InvalidArgument, match="schedule"):
        gc_target(memory_kube, {"graceSeconds": 0})


def test_a_due_gc_is_requested_of_one_node_with_an_agent(memory_kube: MemoryKube,
                                                         fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    pool(memory_kube, "n1")
    pool(memory_kube, "n2")
    pool(memory_kube, "n3", phase="Failed")
    assert candidate_nodes(memory_kube) == ["n1", "n2"]
    target = gc_target(memory_kube, {"schedule": "0 4 * * *", "graceSeconds": 0})
    assert reconcile_target(memory_kube, target, fake_clock).outcome == "done"
    st = memory_kube.get(BACKUP_TARGET, "t", NS)["status"]
    assert st["gc"] == {"nextScheduleTime": "2026-01-06T04:00:00Z"}  # 10:00 now: nothing due
    assert find(st["conditions"], "GarbageCollection")["reason"] == "Scheduled"

    fake_clock.advance(hours=18, minutes=1)  # 2026-01-06 04:01
    tick(memory_kube, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    got = memory_kube.get(BACKUP_TARGET, "t", NS)
    gc = got["status"]["gc"]
    assert gc["phase"] == "Pending" and gc["node"] in ("n1", "n2")
    assert gc["scheduledTime"] == gc["lastScheduleTime"] == "2026-01-06T04:00:00Z"
    assert gc["nextScheduleTime"] == "2026-01-07T04:00:00Z"
    assert [e["reason"] for e in memory_kube.events_for(got)] == ["Ready", "GarbageCollectionScheduled"]

    # the next slot while it is still pending (within PENDING_STALE): skipped, not doubled
    fake_clock.t = fake_clock.t.replace(day=7, hour=4, minute=0, second=30)
    memory_kube.patch_status(BACKUP_TARGET, "t", {"gc": {"scheduledTime": "2026-01-07T03:55:00Z"}}, NS)
    tick(memory_kube, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    again = memory_kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]
    assert again["phase"] == "Pending" and again["scheduledTime"] == "2026-01-07T03:55:00Z"
    assert again["lastScheduleTime"] == "2026-01-07T04:00:00Z"

    # an agent that never started it: the next slot asks again
    fake_clock.advance(days=1)
    tick(memory_kube, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    assert memory_kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]["scheduledTime"] == \
        "2026-01-08T04:00:00Z"


def test_gc_is_requested_of_no_one_without_agents_and_says_so(memory_kube: MemoryKube,
                                                              fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    gc_target(memory_kube, {"schedule": "* * * * *"})
    fake_clock.advance(minutes=2)
    tick(memory_kube, memory_kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    got = memory_kube.get(BACKUP_TARGET, "t", NS)
    cond = find(got["status"]["conditions"], "GarbageCollection")
    assert (cond["status"], cond["reason"]) == ("False", "NoAgentNode")
    assert "phase" not in (got["status"].get("gc") or {})


def test_a_bad_gc_cron_line_is_reported_and_the_target_stays_ready(memory_kube: MemoryKube,
                                                                   fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    target = gc_target(memory_kube, {"schedule": "every sunday"})
    assert reconcile_target(memory_kube, target, fake_clock).outcome == "done"
    got = memory_kube.get(BACKUP_TARGET, "t", NS)
    assert got["status"]["phase"] == "Ready"
    cond = find(got["status"]["conditions"], "GarbageCollection")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSchedule")


def test_an_agent_runs_only_the_gc_requested_of_it(memory_kube: MemoryKube, fake_clock: Any,
                                                   tmp_path: Path) -> None:
    secret(memory_kube, "pw", password="x")
    gc_target(memory_kube, {"schedule": "0 4 * * *"}, path=str(tmp_path / "repo"))
    memory_kube.patch_status(BACKUP_TARGET, "t", {"gc": {"phase": "Completed", "node": "n1"}}, NS)
    assert gc_pass(memory_kube, "n1", fake_clock) == {}
    memory_kube.patch_status(BACKUP_TARGET, "t", {"gc": {"phase": "Pending", "node": "n2"}}, NS)
    assert gc_pass(memory_kube, "n1", fake_clock) == {}
    # its own request, on a directory where there is no repository yet: nothing to collect
    memory_kube.patch_status(BACKUP_TARGET, "t", {"gc": {"phase": "Pending", "node": "n1"}}, NS)
    assert gc_pass(memory_kube, "n1", fake_clock) == {f"{NS}/t": "Completed"}
    gc = memory_kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]
    assert gc["phase"] == "Completed" and gc["bytesFreed"] == 0
    assert "no repository yet" in gc["message"]

