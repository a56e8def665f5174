"""The kopf wiring: what is registered for each role, and Result -> kopf retry semantics.
(kopf itself needs an API server; its handlers are called here as kopf would call them.)"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from statehold.controller.operator import cluster_registry, cluster_tickers, outcome, settings_for
from statehold.controller.problems import Result, backoff
from statehold.kube.kinds import VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret


def handlers(reg: kopf.OperatorRegistry) -> dict[tuple[str, str], Any]:
    # kopf has no public listing of a registry; these two attributes hold every handler
    found = {}
    for sub in (reg._changing, reg._spawning):
        for h in sub.get_all_handlers():
            found[(h.selector.any_name, str(h.id).split("/")[0])] = h
    return found


def test_retry_becomes_temporary_error_with_backoff() -> None:
    with pytest.raises(kopf.TemporaryError) as exc:
        outcome(Result.retry("secret missing", 1.0), retry=3)
    assert exc.value.delay == backoff(3)
    with pytest.raises(kopf.TemporaryError) as exc:
        outcome(Result.retry("later", 600.0), retry=0)
    assert exc.value.delay == 600.0


def test_failed_becomes_permanent_error_and_done_returns() -> None:
    with pytest.raises(kopf.PermanentError):
        outcome(Result.failed("bad cron"), retry=0)
    outcome(Result(), retry=0)
    outcome(Result("skipped"), retry=0)


def test_cluster_role_registers_targets_schedules_and_assignment(fake_clock: Any) -> None:
    kube = MemoryKube(now=fake_clock)
    found = handlers(cluster_registry(kube, fake_clock))
    plurals = {p for p, _ in found}
    assert plurals == {"backuptargets", "backupschedules", "volumebackups", "volumerestores",
                       "statefulsetbackups", "statefulsetrestores"}


def test_schedule_ticker_creates_backups_when_a_slot_comes_due(memory_kube: MemoryKube,
                                                               fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data-0", labels={"backup": "nightly"})
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "hourly", "namespace": NS},
                        "spec": {"schedule": "0 * * * *", "target": "t",
                                 "selector": {"matchLabels": {"backup": "nightly"}}}})
    ticker, *others = cluster_tickers(memory_kube, fake_clock)
    assert [ticker.name] + [t.name for t in others] == ["schedules", "gc-schedules",
                                                         "verify-schedules"]
    ticker.tick()
    assert memory_kube.list(VOLUME_BACKUP, NS) == []
    fake_clock.advance(hours=1)
    ticker.tick()
    assert [o["metadata"]["name"] for o in memory_kube.list(VOLUME_BACKUP, NS)] == [
        "hourly-data-0-202601051100"]


def test_registered_schedule_handler_ignores_a_deleted_object(memory_kube: MemoryKube,
                                                              fake_clock: Any) -> None:
    sched = handlers(cluster_registry(memory_kube, fake_clock))[("backupschedules", "schedule")]
    sched.fn(name="gone", namespace=NS, retry=0)  # deleted meanwhile: no error


def test_registered_assign_handler_raises_permanent_for_a_foreign_pvc(
        memory_kube: MemoryKube, fake_clock: Any) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "ebs", driver="ebs.csi.aws.com")
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                        "metadata": {"name": "b", "namespace": NS},
                        "spec": {"persistentVolumeClaimName": "ebs", "target": "t"}})
    assign = handlers(cluster_registry(memory_kube, fake_clock))[("volumebackups", "assign")]
    with pytest.raises(kopf.PermanentError, match=r"ebs\.csi\.aws\.com"):
        assign.fn(name="b", namespace=NS, retry=0)


def test_node_agents_keep_their_own_kopf_state() -> None:
    a, b = settings_for("node", "n1"), settings_for("node", "n2")
    assert a.persistence.progress_storage.prefix != b.persistence.progress_storage.prefix
    assert a.posting.enabled is False
