"""The operator as it runs in a cluster: real kopf (two operators: the cluster role and the
node agent of n1) against the in-memory API served over HTTP, a real engine pool, a real
backup repository. From a StoragePool and a BackupSchedule to a restored PVC, driven only by
writing custom resources."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

from statehold.controller import operator as op
from statehold.controller.node_grants import SECRETS_ROLE, NodeGrants
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.errors import NotFound
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    PVC,
    ROLE,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
)
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.kube.apiserver import serve
from tests.unit.kube.rbac import RbacKube, as_node_plugin, rules_for
from tests.unit.kube.validation import render

pytestmark = pytest.mark.root
NODE = "n1"


@contextlib.contextmanager
def operator_running(url: str, token: str, registry: kopf.OperatorRegistry,
                     settings: kopf.OperatorSettings, tickers: list[op.Ticker]) -> Iterator[None]:
    kopf.on.login(registry=registry)(lambda **_: kopf.ConnectionInfo(server=url, token=token))
    settings.scanning.disabled = True  # no CRD watching: the served API is fixed
    stop = threading.Event()
    thread = threading.Thread(target=op.run, args=(registry, settings, stop, tickers), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "operator did not stop"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFound, KeyError):
            got = check()
            if got:
                return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_schedule_to_backup_to_restore_through_kopf(memory_kube: MemoryKube, node: Node,
                                                    engine_home: Path, scratch: Path,
                                                    fake_clock: Any) -> None:
    kube = memory_kube
    # each role's handlers act only with what the chart grants its ServiceAccount
    docs = render.render_chart()
    as_operator = RbacKube(kube, rules_for(docs, "statehold-operator"))
    as_node = as_node_plugin(kube, docs)  # the chart's rules and the operator's grants
    grants = NodeGrants(as_operator, "statehold-system")
    # and kopf's own requests (list, watch, annotation patches) are checked the same way
    tokens = {"operator": as_operator.rules, "node": as_node.rules}
    refused: list[str] = []
    with serve(kube, tokens=tokens, denied=refused) as url, \
            operator_running(url, "operator", op.cluster_registry(as_operator, fake_clock,
                                                                 grants=grants),
                             op.settings_for("cluster", None),
                             op.cluster_tickers(as_operator, fake_clock, schedule_interval=0.2,
                                               grants=grants)), \
            operator_running(url, "node", op.node_registry(as_node, node, NODE, fake_clock),
                             op.settings_for("node", NODE),
                             op.node_tickers(as_node, node, NODE, fake_clock, capacity_interval=0.5)):
        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                     "metadata": {"name": "fast"},
                     "spec": {"node": NODE, "directory": str(engine_home / "images"),
                              "imageSize": "1Gi"}})
        wait_for("pool Ready", lambda: kube.get(STORAGE_POOL, "fast")["status"]["phase"] == "Ready")

        # what the CSI driver would have provisioned for data-db-0, with data in it
        vol = node.pool("fast").create_volume("pvc-db0", 32 * MiB, mode=VolumeMode.BLOCK, fs=None)
        fd = os.open(vol.path, os.O_WRONLY)
        os.pwrite(fd, b"statehold" * 1000, 5 * MiB)
        os.close(fd)
        bound_pvc(kube, "data-db-0", node=NODE, pool="fast", volume="pvc-db0", size="32Mi",
                  labels={"backup": "nightly"})
        storage_class(kube)
        secret(kube, "pw", password="e2e password")
        path_target(kube, path=str(scratch / "repo"))
        # the operator lets the node read the target's password (its BackupTarget handler)
        wait_for("node grants", lambda: kube.get(ROLE, SECRETS_ROLE, NS)["rules"])
        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                     "metadata": {"name": "nightly", "namespace": NS},
                     "spec": {"schedule": "0 3 * * *", "target": "t",
                              "selector": {"matchLabels": {"backup": "nightly"}}}})
        wait_for("schedule Ready", lambda: kube.get(BACKUP_SCHEDULE, "nightly", NS)["status"][
            "nextScheduleTime"] == "2026-01-06T03:00:00Z")
        fake_clock.advance(hours=17, minutes=1)  # past 2026-01-06 03:00

        name = "nightly-data-db-0-202601060300"
        done = wait_for("backup Completed", lambda: (
            b := kube.get(VOLUME_BACKUP, name, NS))["status"]["phase"] == "Completed" and b)
        assert done["status"]["node"] == NODE and done["status"]["progress"] == 100

        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                     "metadata": {"name": "copy", "namespace": NS},
                     "spec": {"backup": name, "persistentVolumeClaimName": "data-copy"}})
        restored = wait_for("restore Completed", lambda: (
            r := kube.get(VOLUME_RESTORE, "copy", NS))["status"]["phase"] == "Completed" and r)
        pvc = kube.get(PVC, "data-copy", NS)
        assert pvc["spec"]["volumeName"] == restored["status"]["persistentVolumeName"]
        pool_name, _, vol_name = restored["status"]["volumeHandle"].partition("/")
        with open(node.pool(pool_name).get_volume(vol_name).path, "rb") as f:
            f.seek(5 * MiB)
            assert f.read(9000) == b"statehold" * 1000

        # no kopf finalizers on our objects: deleting a pool object is immediate
        kube.delete(STORAGE_POOL, "fast")
        with pytest.raises(NotFound):
            kube.get(STORAGE_POOL, "fast")
        assert node.pool("fast").name == "fast"  # the pool itself stays on its disks
    assert as_operator.denied == [] and as_node.denied == [] and refused == []
