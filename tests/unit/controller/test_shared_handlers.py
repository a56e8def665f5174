"""VolumeBackup / VolumeRestore of shared volumes, end to end through the reconcilers: the
in-memory API (with our CRD admission, and each account's rendered RBAC), a real shared root
(a plain directory, as a host-based share), the real shared backend and a directory backup
target. A shared PVC is backed up as a file tree and restored into a new PVC with its files
intact; wrong combinations are refused with a reason and create nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from statehold.controller import backup_runner
from statehold.controller.backups import NODE_LABEL, assign_backup, run_backup
from statehold.controller.conditions import find
from statehold.controller.node_grants import NodeGrants
from statehold.controller.restores import assign_restore, run_restore
from statehold.controller.shared_backups import register_class_roots
from statehold.controller.targets import resolve_target
from statehold.engine.node import Node
from statehold.kube.kinds import PV, PVC, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from statehold.shared.ids import split_id
from statehold.shared.parameters import VolumeClass
from statehold.shared.registry import RootSpec
from statehold.shared.service import SharedVolumes
from tests.unit.controller.cluster import NS, path_target, secret, storage_class, volume_backup
from tests.unit.kube.rbac import RbacKube, kept_rules, rules_for
from tests.unit.kube.validation import render

DRIVER = "csi.statehold.io"
FILES = {"index.html": b"<h1>hello</h1>\n", "media/a.bin": os.urandom(300_000),
         "media/deep/b.txt": b"b" * 10_000, "empty": b""}


@pytest.fixture(scope="module")
def accounts() -> dict[str, list[dict[str, Any]]]:
    docs = render.render_chart()
    return {a: rules_for(docs, a) for a in ("statehold-operator", "statehold-node")} | {
        "cluster-roles": [d for d in docs if d["kind"] == "ClusterRole"]}


@pytest.fixture
def world(memory_kube: MemoryKube, scratch: Path, accounts: dict) -> dict[str, Any]:
    """Two nodes running our driver, a host-based shared class, a shared PVC with files."""
    root = scratch / "share"
    root.mkdir()
    params = {"type": "shared", "sharedRoot": str(root), "deletionPolicy": "delete"}
    memory_kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                        "metadata": {"name": "shared-host"}, "provisioner": DRIVER,
                        "parameters": params, "volumeBindingMode": "WaitForFirstConsumer"})
    storage_class(memory_kube)  # statehold-local
    for n in ("n1", "n2"):
        memory_kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
                            "metadata": {"name": n},
                            "spec": {"drivers": [{"name": DRIVER, "nodeID": n}]}})
    secret(memory_kube, "pw", password="s3cret")
    path_target(memory_kube, path=str(scratch / "repo"))
    # the volume as the node plugin that provisioned it made it (another home: another node)
    creator = SharedVolumes(scratch / "home-n0")
    info = creator.create_volume("pvc-uploads", 64 << 20, VolumeClass.from_parameters(params))
    volume_dir = root / "pvc-uploads"
    for rel, data in FILES.items():
        (volume_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (volume_dir / rel).write_bytes(data)
    memory_kube.create({"apiVersion": "v1", "kind": "PersistentVolume",
                        "metadata": {"name": "pv-uploads"},
                        "spec": {"capacity": {"storage": str(info.volume.size)},
                                 "accessModes": ["ReadWriteMany"],
                                 "claimRef": {"namespace": NS, "name": "uploads"},
                                 "csi": {"driver": DRIVER, "volumeHandle": info.id,
                                         "volumeAttributes": info.context}}})
    memory_kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "uploads", "namespace": NS},
                        "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "pv-uploads",
                                 "storageClassName": "shared-host",
                                 "resources": {"requests": {"storage": "64Mi"}}}})
    memory_kube.patch_status(PVC, "uploads", {"phase": "Bound"}, NS)
    operator = RbacKube(memory_kube, accounts["statehold-operator"])
    NodeGrants(operator, "statehold-system").sync(NS)  # the node may read the target's pw
    return {"root": root, "params": params, "handle": info.id, "scratch": scratch,
            "operator": operator,
            "agent": RbacKube(memory_kube, accounts["statehold-node"], kept=kept_rules(
                memory_kube, accounts["cluster-roles"], "statehold-node"))}


def agent(world: dict[str, Any], node: str) -> tuple[Node, SharedVolumes]:
    home = world["scratch"] / f"home-{node}"
    engine = Node(home)
    return engine, SharedVolumes(engine.home)


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), "Ready")
    assert cond is not None
    return cond


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_shared_pvc_is_backed_up_as_a_tree_and_restored_with_its_files(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    op, ag = world["operator"], world["agent"]
    volume_backup(memory_kube, "b1", "uploads")
    assert assign_backup(op, memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock).outcome == "done"
    vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    node = vb["metadata"]["labels"][NODE_LABEL]
    assert node in ("n1", "n2") and vb["status"]["volumeHandle"] == world["handle"]
    other = "n2" if node == "n1" else "n1"

    engine, backend = agent(world, other)
    assert run_backup(ag, vb, engine, other, fake_clock, backend).outcome == "skipped"
    engine, backend = agent(world, node)
    result = run_backup(ag, vb, engine, node, fake_clock, backend)
    assert result.outcome == "done", result.message
    vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert vb["status"]["phase"] == "Completed" and ready(vb)["status"] == "True"
    assert vb["status"]["bytesTotal"] >= sum(len(d) for d in FILES.values())
    assert [e["reason"] for e in memory_kube.events_for(vb)] == ["Scheduled", "Started", "Completed"]
    # the backup says which claim it holds, as a block volume's backup does
    saved = backup_runner.open_repository(resolve_target(memory_kube, NS, "t")).load_manifest(
        vb["status"]["backupId"])
    assert {k: saved.labels[k] for k in ("namespace", "pvc", "volumebackup")} == {
        "namespace": NS, "pvc": "uploads", "volumebackup": "b1"}
    # the agent now knows the root (it was created on another node)
    assert split_id(world["handle"])[0] in backend.registry.known()
    # nothing left behind in the root but the volume itself (the backup's snapshot is gone)
    assert sorted(p.name for p in world["root"].iterdir()) == [".statehold", "pvc-uploads"]

    # a second backup is incremental to the first
    volume_backup(memory_kube, "b2", "uploads")
    assign_backup(op, memory_kube.get(VOLUME_BACKUP, "b2", NS), fake_clock)
    assert run_backup(ag, memory_kube.get(VOLUME_BACKUP, "b2", NS), engine, node, fake_clock,
                      backend).outcome == "done"
    b2 = memory_kube.get(VOLUME_BACKUP, "b2", NS)["status"]
    assert b2["parentBackupId"] == vb["status"]["backupId"]

    # the source changes afterwards; the restore brings back what b1 saw
    (world["root"] / "pvc-uploads" / "index.html").write_bytes(b"defaced")
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": "b1", "persistentVolumeClaimName": "uploads-copy",
                                 "storageClassName": "shared-host",
                                 "accessModes": ["ReadWriteMany"]}})
    assert assign_restore(op, memory_kube.get(VOLUME_RESTORE, "r1", NS), fake_clock).outcome == "done"
    vr = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert vr["metadata"]["labels"][NODE_LABEL] == node
    result = run_restore(ag, vr, engine, node, fake_clock, backend)
    assert result.outcome == "done", result.message
    vr = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert vr["status"]["phase"] == "Completed"
    pv = memory_kube.get(PV, vr["status"]["persistentVolumeName"])
    assert pv["spec"]["csi"]["volumeHandle"] == vr["status"]["volumeHandle"]
    assert pv["spec"]["csi"]["volumeAttributes"]["sharedRoot"] == str(world["root"])
    assert "nodeAffinity" not in pv["spec"] and pv["spec"]["accessModes"] == ["ReadWriteMany"]
    pvc = memory_kube.get(PVC, "uploads-copy", NS)
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == "shared-host"
    restored = world["root"] / split_id(vr["status"]["volumeHandle"])[1]
    assert tree(restored) == FILES
    assert tree(world["root"] / "pvc-uploads")["index.html"] == b"defaced"  # source untouched

    # idempotent: a retry of the finished restore changes nothing
    assert run_restore(ag, memory_kube.get(VOLUME_RESTORE, "r1", NS), engine, node, fake_clock,
                       backend).outcome == "skipped"
    assert ag.denied == [] and op.denied == []


def test_shared_backup_into_a_local_class_is_refused_and_creates_nothing(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    volume_backup(memory_kube, "b1", "uploads")
    assign_backup(world["operator"], memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock)
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"phase": "Completed", "backupId": "abc"}, NS)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": "b1", "persistentVolumeClaimName": "copy",
                                 "storageClassName": "statehold-local"}})
    result = assign_restore(world["operator"], memory_kube.get(VOLUME_RESTORE, "r1", NS), fake_clock)
    assert result.outcome == "failed"
    vr = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert ready(vr)["reason"] == "BackupKindMismatch" and vr["status"]["phase"] == "Failed"
    assert NODE_LABEL not in (vr["metadata"].get("labels") or {})
    assert [e["reason"] for e in memory_kube.events_for(vr)] == ["BackupKindMismatch"]
    assert len(memory_kube.list(PVC, NS)) == 1


def test_many_node_access_into_a_local_class_is_refused(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    from tests.unit.controller.cluster import bound_pvc

    bound_pvc(memory_kube, "db")
    volume_backup(memory_kube, "b1", "db")
    assign_backup(world["operator"], memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock)
    memory_kube.patch_status(VOLUME_BACKUP, "b1", {"phase": "Completed", "backupId": "abc"}, NS)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": "b1", "persistentVolumeClaimName": "copy",
                                 "accessModes": ["ReadWriteMany"]}})
    assert assign_restore(world["operator"], memory_kube.get(VOLUME_RESTORE, "r1", NS),
                          fake_clock).outcome == "failed"
    assert ready(memory_kube.get(VOLUME_RESTORE, "r1", NS))["reason"] == "UnsupportedAccessMode"


def test_shared_backup_waits_for_a_node_running_the_driver(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    from statehold.kube.kinds import CSI_NODE

    for n in ("n1", "n2"):
        memory_kube.delete(CSI_NODE, n)
    volume_backup(memory_kube, "b1", "uploads")
    result = assign_backup(world["operator"], memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock)
    assert result.outcome == "retry"
    vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    assert ready(vb)["reason"] == "NoAgentNode" and NODE_LABEL not in (vb["metadata"].get("labels") or {})


def test_a_pv_describing_another_root_than_its_id_is_refused(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    memory_kube.patch(PV, "pv-uploads", {"spec": {"csi": {"volumeAttributes": {
        "sharedRoot": str(world["scratch"])}}}})
    volume_backup(memory_kube, "b1", "uploads")
    assign_backup(world["operator"], memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock)
    vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)
    node = vb["metadata"]["labels"][NODE_LABEL]
    engine, backend = agent(world, node)
    assert run_backup(world["agent"], vb, engine, node, fake_clock, backend).outcome == "failed"
    assert ready(memory_kube.get(VOLUME_BACKUP, "b1", NS))["reason"] == "RootMismatch"
    assert backend.registry.known() == []


def test_agents_register_the_roots_of_shared_classes(
        memory_kube: MemoryKube, world: dict[str, Any]) -> None:
    memory_kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                        "metadata": {"name": "broken"}, "provisioner": DRIVER,
                        "parameters": {"type": "shared"}})
    memory_kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                        "metadata": {"name": "other"}, "provisioner": "nfs.csi.k8s.io",
                        "parameters": {"type": "shared", "sharedRoot": "/elsewhere"}})
    _engine, backend = agent(world, "n1")
    keys = register_class_roots(world["agent"], backend)
    assert keys == [RootSpec.from_parameters(world["params"]).key]
    assert backend.registry.known() == keys
    assert world["agent"].denied == []


def test_a_missing_share_on_the_agent_node_is_retried(
        memory_kube: MemoryKube, fake_clock: Any, world: dict[str, Any]) -> None:
    hidden = world["root"].with_name("share-away")
    world["root"].rename(hidden)  # the share is not mounted on this node right now
    try:
        volume_backup(memory_kube, "b1", "uploads")
        assign_backup(world["operator"], memory_kube.get(VOLUME_BACKUP, "b1", NS), fake_clock)
        vb = memory_kube.get(VOLUME_BACKUP, "b1", NS)
        node = vb["metadata"]["labels"][NODE_LABEL]
        engine, backend = agent(world, node)
        result = run_backup(world["agent"], vb, engine, node, fake_clock, backend)
        assert result.outcome == "retry" and result.retry_after > 0
        got = memory_kube.get(VOLUME_BACKUP, "b1", NS)
        assert ready(got)["reason"] == "BackupFailed" and got["status"]["phase"] == "Running"
        assert "backupId" not in got["status"]
        assert not world["root"].exists()  # nothing created in its place
    finally:
        hidden.rename(world["root"])
