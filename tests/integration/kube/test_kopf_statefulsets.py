"""StatefulSets through the operator as it runs in a cluster: real kopf (the cluster role and
the node agent of n1, each with only its chart RBAC, kopf's own requests included) against
the in-memory API over HTTP, a real engine pool and repository. A BackupSchedule that
targets a set makes a StatefulSetBackup on time; it runs its hook (exec answered by a local
process: no kubelet here), takes the group and backs the members up; a StatefulSetRestore
of it makes the claims of another set. Waiting is on the API's watch, never on a clock."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from statehold.controller import operator as op
from statehold.controller.node_grants import SECRETS_ROLE, NodeGrants
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.kube.execs import ExecCall
from statehold.kube.facade import ExecResult, Obj
from statehold.kube.kinds import (
    PV,
    PVC,
    ROLE,
    STATEFUL_SET_BACKUP,
    STATEFUL_SET_RESTORE,
    STORAGE_POOL,
    Kind,
)
from statehold.kube.memory import MemoryKube
from tests.integration.kube.test_kopf_e2e import operator_running
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.controller.statefulset_cluster import hook, running_pods, statefulset
from tests.unit.kube.apiserver import serve
from tests.unit.kube.rbac import RbacKube, as_node_plugin, rules_for
from tests.unit.kube.validation import render

pytestmark = pytest.mark.root
NODE = "n1"
API = "statehold.io/v1alpha1"


def until(kube: MemoryKube, kind: Kind, name: str, namespace: str | None, phase: str,
          timeout: float = 120) -> Obj:
    """The object once its status.phase is ``phase`` (watched, not polled); fails on
    Failed or when the watch ends without it."""
    for ev in kube.watch(kind, namespace, timeout=timeout):
        if ev.object["metadata"]["name"] != name:
            continue
        got = (ev.object.get("status") or {}).get("phase")
        assert got != "Failed" or phase == "Failed", ev.object["status"]
        if got == phase:
            return ev.object
    raise AssertionError(f"{kind.kind} {name} never reached {phase}")


def until_granted(kube: MemoryKube, timeout: float = 60) -> None:
    """The node plugin's Secrets Role in NS, once the operator has written it (watched)."""
    for ev in kube.watch(ROLE, NS, timeout=timeout):
        if ev.object["metadata"]["name"] == SECRETS_ROLE and ev.object.get("rules"):
            return
    raise AssertionError(f"no Role {SECRETS_ROLE} in {NS}")


def test_a_scheduled_set_backup_and_its_restore_through_kopf(
        memory_kube: MemoryKube, node: Node, engine_home: Path, scratch: Path,
        fake_clock: Any) -> None:
    kube = memory_kube
    docs = render.render_chart()
    as_operator = RbacKube(kube, rules_for(docs, "statehold-operator"))
    as_node = as_node_plugin(kube, docs)  # the chart's rules and the operator's grants
    grants = NodeGrants(as_operator, "statehold-system")
    tokens = {"operator": as_operator.rules, "node": as_node.rules}
    refused: list[str] = []
    ran: list[str] = []

    def exec_(call: ExecCall) -> ExecResult:
        ran.append(f"{call.pod} {' '.join(call.command)}")
        done = subprocess.run(list(call.command), capture_output=True, text=True,
                              timeout=call.timeout, check=False)
        return ExecResult(done.returncode, done.stdout, done.stderr)

    kube.on_exec(exec_)
    with serve(kube, tokens=tokens, denied=refused) as url, \
            operator_running(url, "operator", op.cluster_registry(as_operator, fake_clock,
                                                                 grants=grants),
                             op.settings_for("cluster", None),
                             op.cluster_tickers(as_operator, fake_clock, schedule_interval=0.2,
                                               grants=grants)), \
            operator_running(url, "node", op.node_registry(as_node, node, NODE, fake_clock),
                             op.settings_for("node", NODE), []):
        kube.create({"apiVersion": API, "kind": "StoragePool", "metadata": {"name": "fast"},
                     "spec": {"node": NODE, "directory": str(engine_home / "images"),
                              "imageSize": "1Gi"}})
        until(kube, STORAGE_POOL, "fast", None, "Ready")
        data = {}
        for o in range(2):  # what the CSI driver would have provisioned, with data in it
            vol = node.pool("fast").create_volume(f"pvc-db{o}", 16 * MiB, mode=VolumeMode.BLOCK,
                                                  fs=None)
            data[o] = f"ordinal {o} ".encode() * 1000
            fd = os.open(vol.path, os.O_WRONLY)
            os.pwrite(fd, data[o], 3 * MiB)
            os.close(fd)
            bound_pvc(kube, f"data-db-{o}", node=NODE, pool="fast", volume=f"pvc-db{o}",
                      size="16Mi")
        statefulset(kube, "db", replicas=2, labels={"backup": "nightly"})
        running_pods(kube, "db", ordinals=range(2))
        storage_class(kube)
        secret(kube, "pw", password="kopf sets")
        path_target(kube, path=str(scratch / "repo"))
        # the operator lets the node read the target's password (its BackupTarget handler)
        until_granted(kube)
        kube.create({"apiVersion": API, "kind": "BackupSchedule",
                     "metadata": {"name": "nightly", "namespace": NS},
                     "spec": {"schedule": "0 3 * * *", "target": "t", "statefulSet": {
                         "selector": {"matchLabels": {"backup": "nightly"}},
                         "hooks": {"pre": [hook("sync", "sync")]}}}})
        fake_clock.advance(hours=17, minutes=1)  # past 2026-01-06 03:00

        done = until(kube, STATEFUL_SET_BACKUP, "nightly-db-202601060300", NS, "Completed")
        assert ran == ["db-0 sync", "db-1 sync"]
        assert done["status"]["consistency"] == "Application" and done["status"]["groupBackupId"]

        kube.create({"apiVersion": API, "kind": "StatefulSetRestore",
                     "metadata": {"name": "copy", "namespace": NS},
                     "spec": {"backup": "nightly-db-202601060300", "statefulSetName": "copy"}})
        until(kube, STATEFUL_SET_RESTORE, "copy", NS, "Completed")
        for o in range(2):
            pv = kube.get(PV, kube.get(PVC, f"data-copy-{o}", NS)["spec"]["volumeName"])
            pool, _, volume = pv["spec"]["csi"]["volumeHandle"].partition("/")
            with open(node.pool(pool).get_volume(volume).path, "rb") as f:
                f.seek(3 * MiB)
                assert f.read(len(data[o])) == data[o]
    assert as_operator.denied == [] and as_node.denied == [] and refused == []
