"""The kubectl plugin (statehold get|describe|backup now) on the in-memory API."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from statehold.cli import backup as backup_cli
from statehold.cli import kubectl, operator
from statehold.errors import NotFound
from statehold.kube.kinds import STORAGE_POOL, VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, volume_backup

runner = CliRunner()


@pytest.fixture
def app(memory_kube: MemoryKube, fake_clock: Any) -> typer.Typer:
    app = typer.Typer()
    backup_cli.register(app)
    kubectl.register(app, kube_factory=lambda _kubeconfig: memory_kube, clock=fake_clock)
    operator.register(app)
    return app


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                        "metadata": {"name": "fast"},
                        "spec": {"node": "n1", "devices": ["/dev/nvme1n1"]}})
    memory_kube.patch_status(STORAGE_POOL, "fast", {"phase": "Ready", "capacity": 100 << 30,
                                                    "allocated": 1 << 30, "free": 99 << 30})
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube)
    bound_pvc(memory_kube, "data", node="n1", size="10Gi")
    bound_pvc(memory_kube, "ebs", driver="ebs.csi.aws.com")
    volume_backup(memory_kube, "b1", "data")
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"phase": "Running", "progress": 40,
                                                   "bytesTotal": 10 << 30}, NS)
    memory_kube.record_event(memory_kube.get(VOLUME_BACKUP, "b1", NS), type="Normal",
                             reason="Started", message="backing up fast/data")
    return memory_kube


def lines(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_get_pools_prints_a_kubectl_table(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["get", "pools"])
    assert res.exit_code == 0, res.output
    assert lines(res.stdout) == [["NAME", "NODE", "PHASE", "CAPACITY", "ALLOCATED", "FREE"],
                                 ["fast", "n1", "Ready", "100Gi", "1Gi", "99Gi"]]


def test_get_volumes_lists_only_statehold_pvs(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["get", "volumes", "-n", NS])
    assert res.exit_code == 0, res.output
    rows = lines(res.stdout)
    assert rows[1][:3] == ["pv-data", f"{NS}/data", "n1"] and len(rows) == 2


def test_get_backups_and_json_output(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["get", "backups", "-n", NS])
    assert lines(res.stdout)[1] == ["b1", "data", "t", "Running", "40%", "10Gi"]
    res = runner.invoke(app, ["get", "backups", "-A", "-o", "json"])
    assert [i["metadata"]["name"] for i in json.loads(res.stdout)["items"]] == ["b1"]


def test_get_schedules_empty_and_unknown_kind(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["get", "schedules", "-n", NS])
    assert res.exit_code == 0 and "No resources found" in res.output
    res = runner.invoke(app, ["get", "widgets"])
    assert res.exit_code != 0 and "unknown kind" in res.output


def test_get_schedules_shows_the_retention_rules(app: typer.Typer, cluster: MemoryKube) -> None:
    for name, retention in (("plain", None), ("calendar", {"keepLast": 3, "keepDaily": 7,
                                                         "keepWithin": "36h"})):
        spec: dict = {"schedule": "0 3 * * *", "target": "t",
                      "selector": {"matchLabels": {"backup": name}}}
        if retention:
            spec["retention"] = retention
        cluster.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                        "metadata": {"name": name, "namespace": NS}, "spec": spec})
    rows = {r[0]: r for r in lines(runner.invoke(app, ["get", "schedules", "-n", NS]).stdout)}
    assert rows["NAME"][3] == "KEEP"

    def keep(row: list[str]) -> str:  # the cron line is five words
        return row[row.index("t") + 1]

    assert keep(rows["plain"]) == "7" and keep(rows["calendar"]) == "last=3,daily=7,within=36h"


def test_describe_shows_status_and_events(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["describe", "backup", "b1", "-n", NS])
    assert res.exit_code == 0, res.output
    body, _, events = res.stdout.partition("Events:")
    assert yaml.safe_load(body)["status"]["progress"] == 40
    assert "Started" in events and "backing up fast/data" in events
    res = runner.invoke(app, ["describe", "backup", "nope", "-n", NS])
    assert res.exit_code != 0 and "not found" in res.output


def test_describe_volume_by_pv_or_by_claim_name(app: typer.Typer, cluster: MemoryKube) -> None:
    by_pv = runner.invoke(app, ["describe", "volume", "pv-data"])
    by_claim = runner.invoke(app, ["describe", "volume", "data", "-n", NS])
    assert by_pv.exit_code == by_claim.exit_code == 0, by_claim.output
    assert by_pv.stdout == by_claim.stdout
    assert yaml.safe_load(by_pv.stdout.partition("Events:")[0])["spec"]["csi"]["volumeHandle"] == "fast/data"


def test_backup_now_creates_a_volume_backup(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["backup", "now", "data", "-n", NS])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "volumebackup.statehold.io/data-now-20260105100000 created"
    made = cluster.get(VOLUME_BACKUP, "data-now-20260105100000", NS)
    assert made["spec"] == {"persistentVolumeClaimName": "data", "target": "t"}


@pytest.mark.parametrize(("final", "code"), [("Completed", 0), ("Failed", 5)])
def test_backup_now_wait_follows_until_the_end(app: typer.Typer, cluster: MemoryKube,
                                               final: str, code: int) -> None:
    name = "data-now-20260105100000"

    def operator() -> None:  # plays the operator: progress, then the end
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                cluster.get(VOLUME_BACKUP, name, NS)
                break
            except NotFound:
                time.sleep(0.01)
        cluster.patch_status(VOLUME_BACKUP, name, {"phase": "Running", "progress": 50}, NS)
        cluster.patch_status(VOLUME_BACKUP, name, {"phase": final, "progress": 100}, NS)

    thread = threading.Thread(target=operator)
    thread.start()
    res = runner.invoke(app, ["backup", "now", "data", "-n", NS, "--wait", "--timeout", "20"])
    thread.join()
    assert res.exit_code == code, res.output
    assert f"{name}: Running 50%" in res.stderr and f"{name}: {final} 100%" in res.stderr


def test_backup_now_of_a_missing_pvc_creates_nothing(app: typer.Typer, cluster: MemoryKube) -> None:
    res = runner.invoke(app, ["backup", "now", "ghost", "-n", NS])
    assert res.exit_code != 0 and "ghost" in res.output
    res = runner.invoke(app, ["backup", "now", "data", "-n", NS, "--target", "missing"])
    assert res.exit_code != 0
    assert [o["metadata"]["name"] for o in cluster.list(VOLUME_BACKUP, NS)] == ["b1"]


def test_operator_crds_prints_every_crd(app: typer.Typer) -> None:
    res = runner.invoke(app, ["operator", "crds"])
    assert res.exit_code == 0
    docs = list(yaml.safe_load_all(res.stdout))
    assert sorted(d["spec"]["names"]["kind"] for d in docs) == [
        "BackupSchedule", "BackupTarget", "ReplicatedVolume", "StatefulSetBackup",
        "StatefulSetRestore", "StoragePool", "VolumeBackup", "VolumeRestore"]


def test_operator_run_rejects_bad_roles(app: typer.Typer) -> None:
    res = runner.invoke(app, ["operator", "run", "--role", "bogus"])
    assert res.exit_code != 0 and "--role" in res.output
    res = runner.invoke(app, ["operator", "run", "--role", "node"])
    assert res.exit_code != 0 and "--node-name" in res.output
