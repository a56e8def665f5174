"""`kubectl statehold backup now --statefulset NAME` and the StatefulSetBackup listing, on the
in-memory API."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from statehold.cli import backup as backup_cli
from statehold.cli import kubectl
from statehold.kube.kinds import STATEFUL_SET_BACKUP, VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, path_target, secret
from tests.unit.controller.statefulset_cluster import claims, hook, statefulset

runner = CliRunner()


@pytest.fixture
def app(memory_kube: MemoryKube, fake_clock: Any) -> typer.Typer:
    app = typer.Typer()
    backup_cli.register(app)
    kubectl.register(app, kube_factory=lambda _kubeconfig: memory_kube, clock=fake_clock)
    return app


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    statefulset(memory_kube)
    claims(memory_kube)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": "nightly", "namespace": NS},
                        "spec": {"schedule": "0 3 * * *", "target": "t", "statefulSet": {
                            "name": "db", "freezeTimeoutSeconds": 3,
                            "hooks": {"pre": [hook("checkpoint", "psql", "-c", "CHECKPOINT")]}}}})
    return memory_kube


def test_backup_now_of_a_statefulset_creates_one_group_backup(app: typer.Typer,
                                                              cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["backup", "now", "--statefulset", "db", "-n", NS])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "statefulsetbackup.statehold.io/db-now-20260105100000 created"
    made = cluster.get(STATEFUL_SET_BACKUP, "db-now-20260105100000", NS)
    assert made["spec"] == {"statefulSetName": "db", "target": "t", "freezeTimeoutSeconds": 10}
    assert cluster.list(VOLUME_BACKUP, NS) == []


def test_backup_now_takes_the_hooks_of_a_schedule(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["backup", "now", "--statefulset", "db", "-n", NS,
                              "--hooks-from", "nightly", "--name", "before-upgrade"])
    assert res.exit_code == 0, res.output
    spec = cluster.get(STATEFUL_SET_BACKUP, "before-upgrade", NS)["spec"]
    assert spec["freezeTimeoutSeconds"] == 3
    assert spec["hooks"]["pre"][0]["command"] == ["psql", "-c", "CHECKPOINT"]


@pytest.mark.parametrize("args", [
    ["backup", "now", "-n", NS],                                   # nothing named
    ["backup", "now", "data-db-0", "--statefulset", "db", "-n", NS],  # both
    ["backup", "now", "--statefulset", "ghost", "-n", NS],         # no such set
    ["backup", "now", "data-db-0", "--hooks-from", "nightly", "-n", NS],
])
def test_backup_now_refuses_unclear_requests_and_creates_nothing(
        app: typer.Typer, cluster: MemoryKube, args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert cluster.list(STATEFUL_SET_BACKUP, NS) == [] and cluster.list(VOLUME_BACKUP, NS) == []


def test_get_setbackups_lists_them(app: typer.Typer, cluster: MemoryKube) -> None:
    runner.invoke(app, ["backup", "now", "--statefulset", "db", "-n", NS])
    cluster.patch_status(STATEFUL_SET_BACKUP, "db-now-20260105100000", {
        "phase": "Completed", "statefulSet": "db", "consistency": "Application", "progress": 100,
        "members": [{"ordinal": o, "template": "data", "claim": f"data-db-{o}"} for o in range(3)]},
        NS)
    res = runner.invoke(app, ["get", "ssb", "-n", NS])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.strip().splitlines()]
    assert rows == [["NAME", "STATEFULSET", "TARGET", "PHASE", "MEMBERS", "CONSISTENCY", "PROGRESS"],
                    ["db-now-20260105100000", "db", "t", "Completed", "3", "Application", "100%"]]
    res = runner.invoke(app, ["describe", "setbackup", "db-now-20260105100000", "-n", NS])
    assert res.exit_code == 0 and "statefulSetName: db" in res.stdout
