"""The cluster operator's metrics on a real API server (``kube_control_plane``): the
operator runs as a process with ``--metrics-address`` and the chart's CRDs installed; a
VolumeBackup of a claim another driver owns fails, and its /metrics, scraped over HTTP,
counts the failure; a completed VolumeBackup sets the claim's newest-success timestamp."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from statehold.kube.client import ApiKube
from statehold.kube.kinds import VOLUME_BACKUP
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.metrics import value
from tests.integration.kube.installing import Admin, Installation
from tests.integration.kube.test_operator_metrics_process import failures, free_port, scraped
from tests.integration.kube.test_operator_process import wait_for
from tests.unit.kube.validation import render


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[tuple[ApiKube, str, Path]]:
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    ns = f"metrics-{uuid.uuid4().hex[:8]}"
    try:
        for path in sorted((render.CHART / "crds").glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if crd:
                    inst.crd(crd)
        inst.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig)), ns, kube_control_plane.kubeconfig
    finally:
        inst.remove()
        admin.close()


def objects(ns: str, scratch: Path) -> list[dict[str, Any]]:
    pv = f"pv-ebs-{ns}"
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pw", "namespace": ns},
         "stringData": {"password": "x"}},
        {"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
         "metadata": {"name": "t", "namespace": ns},
         "spec": {"path": {"path": str(scratch / "repo")}, "passwordSecretRef": {"name": "pw"}}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "claimRef": {"namespace": ns, "name": "ebs-data"},
                  "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1", "fsType": "xfs"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "ebs-data", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv, "storageClassName": "",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]


def test_the_operator_counts_a_failed_backup_and_reports_the_newest_success(
        cluster: tuple[ApiKube, str, Path], scratch: Path) -> None:
    kube, ns, kubeconfig = cluster
    for obj in objects(ns, scratch):
        kube.create(obj)
    # a completed backup of another claim (as a node agent leaves it): its completion time
    # is that claim's newest success
    kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                 "metadata": {"name": "done", "namespace": ns, "labels": {"statehold.io/node": "n1"}},
                 "spec": {"persistentVolumeClaimName": "db", "target": "t"}})
    kube.patch_status(VOLUME_BACKUP, "done", {"phase": "Completed",
                                              "completionTime": "2026-01-05T10:02:00Z"}, ns)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "statehold.cli.main", "operator", "run", "--role", "cluster",
         "--no-replication", "--kubeconfig", str(kubeconfig), "--metrics-address", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for("metrics", lambda: failures(url) is not None, proc)
        before = failures(url)
        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                     "metadata": {"name": "b1", "namespace": ns},
                     "spec": {"persistentVolumeClaimName": "ebs-data", "target": "t"}})
        wait_for("failed backup", lambda: (kube.get(VOLUME_BACKUP, "b1", ns).get("status")
                                           or {}).get("phase") == "Failed", proc)
        assert wait_for("counted", lambda: failures(url) == (before or 0) + 1, proc)
        got = wait_for("scrape", lambda: scraped(url), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:  # our own process, by pid
                proc.kill()
                proc.wait(10)
    assert code == 0
    done = datetime(2026, 1, 5, 10, 2, tzinfo=UTC).timestamp()
    assert value(got, "statehold_backup_last_success_timestamp_seconds", volume=f"{ns}/db") == done
    assert (value(got, "statehold_reconcile_errors_total", kind="VolumeBackup") or 0) >= 1
