"""Shared volumes through the operator as it runs in a cluster: real kopf (the cluster role
and the node agent of n1, each limited to its chart RBAC) against the in-memory API over
HTTP, a real shared root (a plain directory, host-based) and a directory backup target.
A BackupSchedule picks a shared PVC; the agent backs it up as a file tree; a VolumeRestore
makes a new shared PVC holding the same files. The agent builds its shared backend itself
(from the engine home) and learns the root from the StorageClass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statehold.controller import operator as op
from statehold.controller.node_grants import SECRETS_ROLE, NodeGrants
from statehold.engine.node import Node
from statehold.kube.kinds import BACKUP_SCHEDULE, PV, PVC, ROLE, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from statehold.shared.ids import split_id
from statehold.shared.parameters import VolumeClass
from statehold.shared.registry import RootRegistry
from statehold.shared.service import SharedVolumes
from tests.integration.kube.test_kopf_e2e import operator_running, wait_for
from tests.unit.controller.cluster import NS, path_target, secret
from tests.unit.kube.apiserver import serve
from tests.unit.kube.rbac import RbacKube, as_node_plugin, rules_for
from tests.unit.kube.validation import render

NODE = "n1"
DRIVER = "csi.statehold.io"
FILES = {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256)) * 512}


def test_shared_pvc_schedule_backup_restore_through_kopf(memory_kube: MemoryKube, scratch: Path,
                                                         fake_clock: Any) -> None:
    kube = memory_kube
    root = scratch / "share"
    root.mkdir()
    params = {"type": "shared", "sharedRoot": str(root)}
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                 "metadata": {"name": "shared-host"}, "provisioner": DRIVER,
                 "parameters": params, "volumeBindingMode": "WaitForFirstConsumer"})
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": NODE},
                 "spec": {"drivers": [{"name": DRIVER, "nodeID": NODE}]}})
    # provisioned (as the CSI plugin of another node would) and written to by a pod
    other = SharedVolumes(scratch / "home-n0")
    info = other.create_volume("pvc-assets", 32 << 20, VolumeClass.from_parameters(params))
    for rel, data in FILES.items():
        (root / "pvc-assets" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "pvc-assets" / rel).write_bytes(data)
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-assets"},
                 "spec": {"capacity": {"storage": str(info.volume.size)},
                          "accessModes": ["ReadWriteMany"],
                          "claimRef": {"namespace": NS, "name": "assets"},
                          "csi": {"driver": DRIVER, "volumeHandle": info.id,
                                  "volumeAttributes": info.context}}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "assets", "namespace": NS, "labels": {"backup": "nightly"}},
                 "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "pv-assets",
                          "storageClassName": "shared-host",
                          "resources": {"requests": {"storage": "32Mi"}}}})
    kube.patch_status(PVC, "assets", {"phase": "Bound"}, NS)
    secret(kube, "pw", password="e2e password")
    path_target(kube, path=str(scratch / "repo"))

    engine = Node(scratch / "home-n1")
    docs = render.render_chart()
    as_operator = RbacKube(kube, rules_for(docs, "statehold-operator"))
    as_node = as_node_plugin(kube, docs)  # the chart's rules and the operator's grants
    grants = NodeGrants(as_operator, "statehold-system")
    refused: list[str] = []
    with serve(kube, tokens={"operator": as_operator.rules, "node": as_node.rules},
               denied=refused) as url, \
            operator_running(url, "operator", op.cluster_registry(as_operator, fake_clock,
                                                                 grants=grants),
                             op.settings_for("cluster", None),
                             op.cluster_tickers(as_operator, fake_clock, schedule_interval=0.2,
                                               grants=grants)), \
            operator_running(url, "node", op.node_registry(as_node, engine, NODE, fake_clock),
                             op.settings_for("node", NODE),
                             op.node_tickers(as_node, engine, NODE, fake_clock,
                                             capacity_interval=0.5)):
        # the agent registers the class's root at start
        wait_for("root registered", lambda: RootRegistry(engine.home).known() == [info.context["rootKey"]])
        # the operator lets the node read the target's password (its first grants pass)
        wait_for("node grants", lambda: kube.get(ROLE, SECRETS_ROLE, NS)["rules"])
        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                     "metadata": {"name": "nightly", "namespace": NS},
                     "spec": {"schedule": "0 3 * * *", "target": "t",
                              "selector": {"matchLabels": {"backup": "nightly"}}}})
        wait_for("schedule Ready", lambda: kube.get(BACKUP_SCHEDULE, "nightly", NS)["status"][
            "nextScheduleTime"] == "2026-01-06T03:00:00Z")
        fake_clock.advance(hours=17, minutes=1)
        name = "nightly-assets-202601060300"
        done = wait_for("backup Completed", lambda: (
            b := kube.get(VOLUME_BACKUP, name, NS))["status"]["phase"] == "Completed" and b)
        assert done["status"]["node"] == NODE and done["status"]["volumeHandle"] == info.id

        kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                     "metadata": {"name": "copy", "namespace": NS},
                     "spec": {"backup": name, "persistentVolumeClaimName": "assets-copy",
                              "storageClassName": "shared-host", "accessModes": ["ReadWriteMany"]}})
        restored = wait_for("restore Completed", lambda: (
            r := kube.get(VOLUME_RESTORE, "copy", NS))["status"]["phase"] == "Completed" and r)
    pv = kube.get(PV, restored["status"]["persistentVolumeName"])
    assert kube.get(PVC, "assets-copy", NS)["spec"]["volumeName"] == pv["metadata"]["name"]
    copy = root / split_id(pv["spec"]["csi"]["volumeHandle"])[1]
    assert {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == FILES
    assert as_operator.denied == [] and as_node.denied == [] and refused == []
