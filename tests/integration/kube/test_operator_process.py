"""`statehold operator run` as a process, as the Deployment runs it: kubeconfig login (for
the facade and for kopf), Lease leader election, a handled BackupTarget, SIGTERM -> clean
exit with the lease released."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from statehold.errors import NotFound
from statehold.kube.kinds import BACKUP_TARGET, LEASE, STORAGE_POOL
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, path_target, secret
from tests.unit.kube.apiserver import serve


def wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes],
             timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"operator exited {proc.returncode} while waiting for {what}"
        with contextlib.suppress(NotFound, KeyError):
            got = check()
            if got:
                return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_cluster_operator_process_leads_handles_and_stops_cleanly(memory_kube: MemoryKube,
                                                                   scratch: Path) -> None:
    secret(memory_kube, "pw", password="x")
    path_target(memory_kube, path=str(scratch / "repo"))
    with serve(memory_kube) as url:
        kubeconfig = scratch / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "memory",
            "clusters": [{"name": "memory", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "test-token"}}],
            "contexts": [{"name": "memory", "context": {"cluster": "memory", "user": "u"}}]}))
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "statehold.cli.main", "operator", "run", "--role", "cluster",
             "--kubeconfig", str(kubeconfig), "--leader-election", "--lease-namespace",
             "statehold-system", "--identity", "op-1", "--lease-seconds", "5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for("lease", lambda: memory_kube.get(LEASE, "statehold-operator",
                                                      "statehold-system")["spec"]["holderIdentity"]
                     == "op-1", proc)
            wait_for("target Ready", lambda: memory_kube.get(BACKUP_TARGET, "t", NS)["status"][
                "phase"] == "Ready", proc)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        lease = memory_kube.get(LEASE, "statehold-operator", "statehold-system")
        assert lease["spec"]["holderIdentity"] == ""


@pytest.mark.root
def test_node_agent_process_creates_its_pool_and_stops_cleanly(memory_kube: MemoryKube,
                                                               scratch: Path,
                                                               engine_home: Path) -> None:
    with serve(memory_kube) as url:
        kubeconfig = scratch / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "memory",
            "clusters": [{"name": "memory", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "memory", "context": {"cluster": "memory", "user": "u"}}]}))
        memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                            "metadata": {"name": "local"},
                            "spec": {"node": "n1", "directory": str(engine_home / "images"),
                                     "imageSize": "512Mi"}})
        memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                            "metadata": {"name": "elsewhere"},
                            "spec": {"node": "n2", "directory": str(engine_home / "other"),
                                     "imageSize": "512Mi"}})
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "statehold.cli.main", "operator", "run", "--role", "node",
             "--node-name", "n1", "--home", str(engine_home), "--kubeconfig", str(kubeconfig)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            pool = wait_for("pool Ready", lambda: (p := memory_kube.get(STORAGE_POOL, "local"))[
                "status"]["phase"] == "Ready" and p, proc)
            assert pool["status"]["capacity"] > 0
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert "status" not in memory_kube.get(STORAGE_POOL, "elsewhere")  # n2's, not ours
        assert not (engine_home / "other").exists()
