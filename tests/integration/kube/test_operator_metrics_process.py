"""`statehold operator run --metrics-address` as a process against the in-memory API over
HTTP, scraped over HTTP: the cluster role counts a VolumeBackup it failed; the node role (the
node DaemonSet's agent) serves this node's pool and volume series."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import VolumeMode
from statehold.kube.kinds import VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.fixtures.metrics import Samples, scrape, value
from tests.integration.kube.test_operator_process import wait_for
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, volume_backup
from tests.unit.kube.apiserver import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failures(url: str) -> float | None:
    try:
        got: Samples = scrape(url)
    except (urllib.error.URLError, ConnectionError):
        return None
    return value(got, "statehold_backups_total", result="failed")


@contextmanager
def operator(memory_kube: MemoryKube, scratch: Path,
             *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The operator process with ``args`` and metrics on a free loopback port; SIGTERM after,
    and it must exit 0."""
    port = free_port()
    with serve(memory_kube) as url:
        kubeconfig = scratch / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "memory",
            "clusters": [{"name": "memory", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "test-token"}}],
            "contexts": [{"name": "memory", "context": {"cluster": "memory", "user": "u"}}]}))
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "statehold.cli.main", "operator", "run", *args,
             "--kubeconfig", str(kubeconfig), "--metrics-address", f"127.0.0.1:{port}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            yield proc, f"http://127.0.0.1:{port}/metrics"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            finally:
                if proc.poll() is None:  # our own process, by pid
                    proc.kill()
                    proc.wait(10)
        assert code == 0


def scraped(url: str) -> Samples | None:
    try:
        return scrape(url)
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.mark.root
def test_the_node_role_serves_its_pools_and_volumes(memory_kube: MemoryKube, node: Node, pool: Pool,
                                                    scratch: Path) -> None:
    vol = pool.create_volume("data", 64 * 1024 * 1024, mode=VolumeMode.BLOCK, fs=None)
    with operator(memory_kube, scratch, "--role", "node", "--node-name", "n1",
                  "--home", str(node.home)) as (proc, url):
        got = wait_for("metrics", lambda: scraped(url), proc)
    assert value(got, "statehold_pool_capacity_bytes", pool=pool.name) == pool.capacity().total
    assert value(got, "statehold_pool_provisioned_bytes", pool=pool.name) == vol.size
    assert value(got, "statehold_volume_size_bytes", volume=vol.id) == vol.size
    assert value(got, "statehold_volume_snapshots", volume=vol.id) == 0
    assert value(got, "statehold_pool_volumes_abnormal", pool=pool.name) == 0


def test_a_failed_backup_increments_the_operators_failure_counter(memory_kube: MemoryKube,
                                                                  scratch: Path) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube, path=str(scratch / "repo"))
    bound_pvc(memory_kube, "ebs-data", driver="ebs.csi.aws.com")
    with operator(memory_kube, scratch, "--role", "cluster", "--no-replication") as (proc, metrics):
        assert wait_for("metrics", lambda: failures(metrics) == 0, proc)
        volume_backup(memory_kube, "b1", "ebs-data")
        wait_for("failed backup", lambda: (memory_kube.get(VOLUME_BACKUP, "b1", NS).get("status")
                                           or {}).get("phase") == "Failed", proc)
        # counted right after the status is written, in the same handler call
        assert wait_for("counted", lambda: failures(metrics) == 1, proc)
        got = scrape(metrics)
    assert value(got, "statehold_reconcile_total", kind="VolumeBackup", outcome="failed") == 1
    assert value(got, "statehold_reconcile_errors_total", kind="VolumeBackup") == 1
