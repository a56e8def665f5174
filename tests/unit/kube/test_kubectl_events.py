"""``kubectl statehold events``: a claim's or a volume's Events across kinds, oldest first."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from statehold.cli import backup as backup_cli
from statehold.cli import kubectl
from statehold.kube.kinds import PV, PVC, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, volume_backup

runner = CliRunner()


@pytest.fixture
def app(memory_kube: MemoryKube, fake_clock: Any) -> typer.Typer:
    app = typer.Typer()
    backup_cli.register(app)
    kubectl.register(app, kube_factory=lambda _kubeconfig: memory_kube, clock=fake_clock)
    return app


@pytest.fixture
def history(memory_kube: MemoryKube, fake_clock: Any) -> MemoryKube:
    """Events on the claim, its PV, a backup of it, a restore of that backup and an
    unrelated claim, each a minute after the last, recorded out of kind order."""
    k = memory_kube
    secret(k, "pw", password="x")
    path_target(k)
    bound_pvc(k, "data")
    bound_pvc(k, "other")
    volume_backup(k, "b1", "data")
    k.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
              "metadata": {"name": "r1", "namespace": NS},
              "spec": {"backup": "b1", "persistentVolumeClaimName": "data-copy"}})

    def at(obj: dict[str, Any], reason: str) -> None:
        fake_clock.advance(minutes=1)
        k.record_event(obj, type="Normal", reason=reason, message=f"{reason} happened")

    at(k.get(VOLUME_BACKUP, "b1", NS), "BackupStarted")
    at(k.get(PV, "pv-data"), "Attached")
    at(k.get(PVC, "other", NS), "Unrelated")
    at(k.get(PVC, "data", NS), "Resized")
    at(k.get(VOLUME_RESTORE, "r1", NS), "RestoreStarted")
    return k


def reasons(out: str) -> list[str]:
    return [e["reason"] for e in json.loads(out)["items"]]


def test_events_of_a_claim_cover_its_volume_backups_and_restores_in_time_order(
        app: typer.Typer, history: MemoryKube) -> None:
    res = runner.invoke(app, ["events", "data", "-n", NS, "-o", "json"])
    assert res.exit_code == 0, res.output
    assert reasons(res.stdout) == ["BackupStarted", "Attached", "Resized", "RestoreStarted"]


def test_events_of_a_volume_by_its_pv_name_are_the_same_as_of_its_claim(
        app: typer.Typer, history: MemoryKube) -> None:
    res = runner.invoke(app, ["events", "pv-data", "-n", NS, "-o", "json"])
    assert res.exit_code == 0, res.output
    assert reasons(res.stdout) == ["BackupStarted", "Attached", "Resized", "RestoreStarted"]


def test_events_table_names_the_object_of_each_event(app: typer.Typer,
                                                      history: MemoryKube) -> None:
    res = runner.invoke(app, ["events", "data", "-n", NS])
    assert res.exit_code == 0, res.output
    rows = [line.split()[:4] for line in res.stdout.strip().splitlines()]
    assert rows[0] == ["LAST", "SEEN", "TYPE", "REASON"]
    assert [(r[2], r[3]) for r in rows[1:]] == [
        ("BackupStarted", "volumebackup/b1"), ("Attached", "persistentvolume/pv-data"),
        ("Resized", "persistentvolumeclaim/data"), ("RestoreStarted", "volumerestore/r1")]


def test_events_of_an_unknown_name_is_not_found(app: typer.Typer, history: MemoryKube) -> None:
    res = runner.invoke(app, ["events", "nope", "-n", NS])
    assert res.exit_code != 0
    assert "nope" in res.output
