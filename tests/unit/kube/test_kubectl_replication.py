"""The kubectl plugin's replicated-volume commands on the in-memory API: volume get (every
copy), volume promote / move (spec requests), node retire (pools decommissioned), and the
host form of volume get kept for `statehold volume get`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from statehold.cli import kubectl
from statehold.cli import volume as volume_cli
from statehold.kube.kinds import REPLICATED_VOLUME, STORAGE_POOL
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import bound_pvc
from tests.unit.controller.replication_fakes import node, pool, replicated_pv

runner = CliRunner()
NS = "db"


@pytest.fixture
def app(memory_kube: MemoryKube, fake_clock: Any) -> typer.Typer:
    app = typer.Typer()
    volume_cli.register(app)  # the host form exists before the plugin adds the cluster one
    kubectl.register(app, kube_factory=lambda _kubeconfig: memory_kube, clock=fake_clock)
    return app


@pytest.fixture
def cluster(memory_kube: MemoryKube) -> MemoryKube:
    for i in (1, 2, 3):
        node(memory_kube, f"n{i}")
        pool(memory_kube, f"p{i}", f"n{i}")
    pool(memory_kube, "p1b", "n1")
    replicated_pv(memory_kube, replicas=3)
    memory_kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data", "namespace": NS},
                        "spec": {"volumeName": "pvc-1", "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "10Gi"}}}})
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "ReplicatedVolume",
                        "metadata": {"name": "pvc-1"},
                        "spec": {"volumeHandle": "p1/pvc-1", "replicas": 3, "size": 10 << 30}})
    memory_kube.patch_status(REPLICATED_VOLUME, "pvc-1", {
        "epoch": 2, "primary": "n1", "lagSeconds": 4.5, "copies": [
            {"node": "n2", "pool": "p2", "role": "replica", "point": "e2-7", "lagSeconds": 4.5,
             "state": "InSync"},
            {"node": "n1", "pool": "p1", "role": "primary", "point": "e2-7", "state": "Serving"},
            {"node": "n3", "pool": "p3", "role": "seeding", "state": "Seeding"}]})
    bound_pvc(memory_kube, "plain", node="n2")  # a single-copy volume in namespace databases
    return memory_kube


def run(app: typer.Typer, *args: str, prog: str | None = None) -> Result:
    return runner.invoke(app, list(args), prog_name=prog)


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_volume_get_shows_every_copy_primary_first(app: typer.Typer, cluster: MemoryKube) -> None:
    res = run(app, "volume", "get", "data", "-n", NS)
    assert res.exit_code == 0, res.output
    assert rows(res.stdout) == [["NODE", "ROLE", "POINT", "LAG", "STATE"],
                                ["n1", "primary", "e2-7", "-", "Serving"],
                                ["n2", "replica", "e2-7", "4.5s", "InSync"],
                                ["n3", "seeding", "-", "-", "Seeding"]]
    wide = run(app, "volume", "get", "data", "-n", NS, "-o", "wide")
    assert rows(wide.stdout)[0][-2:] == ["POOL", "POINT-TIME"]
    as_json = json.loads(run(app, "volume", "get", "data", "-n", NS, "-o", "json").stdout)
    assert as_json["kind"] == "ReplicatedVolume" and as_json["status"]["epoch"] == 2


def test_kubectl_statehold_volume_get_is_the_cluster_form(app: typer.Typer,
                                                          cluster: MemoryKube) -> None:
    res = run(app, "volume", "get", "plain", prog="kubectl-statehold")
    assert res.exit_code == 3 and "PVC default/plain does not exist" in res.stderr
    res = run(app, "volume", "get", "plain", "-n", "databases")
    assert rows(res.stdout)[1] == ["n2", "primary", "-", "-", "Serving"]


def test_volume_get_lists_the_namespace_volumes(app: typer.Typer, cluster: MemoryKube) -> None:
    res = run(app, "volume", "get", "-A")
    assert res.exit_code == 0, res.output
    assert rows(res.stdout) == [["CLAIM", "PRIMARY", "EPOCH", "COPIES", "LAG"],
                                ["databases/plain", "n2", "-", "1/1", "-"],
                                ["db/data", "n1", "2", "2/3", "4.5s"]]


def test_volume_get_without_cluster_flags_is_this_hosts_volumes(app: typer.Typer,
                                                                tmp_path: Path) -> None:
    res = run(app, "volume", "get", "--home", str(tmp_path / "nohome"))
    assert res.exit_code == 3 and "Statehold home" in res.stderr
    res = run(app, "volume", "get", "x", "-n", NS, "--pool", "p1")
    assert res.exit_code == 2 and "--pool and --home" in res.stderr


def test_volume_promote_writes_the_request(app: typer.Typer, cluster: MemoryKube) -> None:
    res = run(app, "volume", "promote", "data", "-n", NS, "--node", "n2")
    assert res.exit_code == 0, res.output
    assert "promote to n2 requested" in res.stdout
    assert cluster.get(REPLICATED_VOLUME, "pvc-1")["spec"]["promote"] == {"node": "n2"}
    again = run(app, "volume", "move", "data", "-n", NS, "--to", "n3")
    assert again.exit_code == 5 and "already has a promote request" in again.stderr


def test_volume_promote_of_a_node_without_a_copy_is_not_found(app: typer.Typer,
                                                              cluster: MemoryKube) -> None:
    res = run(app, "volume", "promote", "data", "-n", NS, "--node", "n9")
    assert res.exit_code == 3 and "copies on: n1, n2, n3" in res.stderr
    assert "promote" not in cluster.get(REPLICATED_VOLUME, "pvc-1")["spec"]
    single = run(app, "volume", "promote", "plain", "-n", "databases", "--node", "n1")
    assert single.exit_code == 5 and "one copy" in single.stderr


def test_volume_move_writes_the_request(app: typer.Typer, cluster: MemoryKube) -> None:
    res = run(app, "volume", "move", "data", "-n", NS, "--to", "n3")
    assert res.exit_code == 0, res.output
    assert cluster.get(REPLICATED_VOLUME, "pvc-1")["spec"]["move"] == {"to": "n3"}
    here = run(app, "volume", "move", "data", "-n", NS, "--to", "n1")
    assert here.exit_code == 0 and "already has its primary on n1" in here.stdout
    unknown = run(app, "volume", "move", "data", "-n", NS, "--to", "n9")
    assert unknown.exit_code == 3


def test_node_retire_decommissions_every_pool_of_the_node(app: typer.Typer,
                                                          cluster: MemoryKube) -> None:
    res = run(app, "node", "retire", "n1")
    assert res.exit_code == 0, res.output
    assert rows(res.stdout) == [["storagepool.statehold.io/p1", "decommission", "requested"],
                                ["storagepool.statehold.io/p1b", "decommission", "requested"]]
    assert [p["metadata"]["name"] for p in cluster.list(STORAGE_POOL)
            if p["spec"]["decommission"]] == ["p1", "p1b"]
    missing = run(app, "node", "retire", "n9")
    assert missing.exit_code == 3 and "no StoragePool" in missing.stderr
