"""The node agent's handlers on a real engine (loop devices, XFS, reflinks) with the
in-memory API: a StoragePool becomes a pool, a VolumeBackup reads the volume's snapshot into
a real repository (incremental the second time), a VolumeRestore brings the bytes back in a
new volume bound to a new PV and PVC."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from statehold.controller.backups import assign_backup, run_backup
from statehold.controller.conditions import find
from statehold.controller.pools import reconcile_pool
from statehold.controller.restores import assign_restore, run_restore
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.kube.kinds import PV, PVC, STORAGE_POOL, VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class, volume_backup

pytestmark = pytest.mark.root
NODE = "n1"


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), "Ready")
    assert cond is not None
    return cond


@pytest.fixture
def pool_obj(memory_kube: MemoryKube, node: Node, engine_home: Path, fake_clock: Any) -> dict:
    obj = memory_kube.create({
        "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "fast"},
        "spec": {"node": NODE, "directory": str(engine_home / "pool-images"), "imageSize": "1Gi"}})
    result = reconcile_pool(memory_kube, obj, node, NODE, fake_clock)
    assert result.outcome == "done", result
    return memory_kube.get(STORAGE_POOL, "fast")


def test_storage_pool_is_created_on_its_node_and_reports_capacity(
        memory_kube: MemoryKube, node: Node, pool_obj: dict, fake_clock: Any) -> None:
    st = pool_obj["status"]
    assert st["phase"] == "Ready" and ready(pool_obj)["status"] == "True"
    assert st["capacity"] > 900 * MiB and st["free"] > 0 and st["volumes"] == 0
    assert node.pool("fast").mountpoint == Path(st["mountpoint"])
    # again: nothing new, no second Created event
    assert reconcile_pool(memory_kube, pool_obj, node, NODE, fake_clock).outcome == "done"
    created = [e for e in memory_kube.events_for(pool_obj) if e["reason"] == "Created"]
    assert len(created) == 1 and created[0]["count"] == 1
    # another node's agent leaves it alone
    assert reconcile_pool(memory_kube, pool_obj, node, "n2", fake_clock).outcome == "skipped"
    assert find(pool_obj["status"]["conditions"], "SpecApplied")["status"] == "True"


def test_changing_a_pools_disks_is_reported_not_applied(
        memory_kube: MemoryKube, node: Node, pool_obj: dict, engine_home: Path, fake_clock: Any) -> None:
    memory_kube.patch(STORAGE_POOL, "fast", {"spec": {"directory": str(engine_home / "elsewhere")}})
    obj = memory_kube.get(STORAGE_POOL, "fast")
    assert reconcile_pool(memory_kube, obj, node, NODE, fake_clock).outcome == "done"
    got = memory_kube.get(STORAGE_POOL, "fast")
    cond = find(got["status"]["conditions"], "SpecApplied")
    assert (cond["status"], cond["reason"]) == ("False", "SpecMismatch")
    assert "SpecMismatch" in [e["reason"] for e in memory_kube.events_for(got) if e["type"] == "Warning"]
    assert got["status"]["phase"] == "Ready"  # the pool itself still works
    assert not (engine_home / "elsewhere").exists()


def test_storage_pool_on_a_missing_device_fails_with_a_reason(
        memory_kube: MemoryKube, node: Node, fake_clock: Any) -> None:
    obj = memory_kube.create({
        "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "gone"},
        "spec": {"node": NODE, "devices": ["/dev/statehold-test-no-such-disk"]}})
    result = reconcile_pool(memory_kube, obj, node, NODE, fake_clock)
    assert result.outcome in ("failed", "retry")
    got = memory_kube.get(STORAGE_POOL, "gone")
    assert ready(got)["status"] == "False"
    assert [e["type"] for e in memory_kube.events_for(got)] == ["Warning"]
    assert [p.name for p in node.pools()] == []


def write_pattern(path: Path, seed: int, offsets: list[int]) -> dict[int, bytes]:
    data = {}
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in offsets:
            block = bytes([(seed + off // MiB) % 251 + 1]) * 65536
            os.pwrite(fd, block, off)
            data[off] = block
    finally:
        os.close(fd)
    return data


def read_at(path: Path, off: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def test_backup_then_incremental_then_restore_round_trips_the_bytes(
        memory_kube: MemoryKube, node: Node, pool_obj: dict, scratch: Path, fake_clock: Any) -> None:
    pool = node.pool("fast")
    vol = pool.create_volume("pvc-src", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    first = write_pattern(vol.path, 1, [0, 8 * MiB, 40 * MiB])
    secret(memory_kube, "pw", password="correct horse")
    path_target(memory_kube, path=str(scratch / "repo"))
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data", node=NODE, pool="fast", volume="pvc-src", size="64Mi")

    def back_up(name: str) -> dict:
        vb = volume_backup(memory_kube, name, "data")
        assert assign_backup(memory_kube, vb, fake_clock).outcome == "done"
        vb = memory_kube.get(VOLUME_BACKUP, name, NS)
        assert run_backup(memory_kube, vb, node, "n2", fake_clock).outcome == "skipped"
        result = run_backup(memory_kube, vb, node, NODE, fake_clock)
        assert result.outcome == "done", result
        return memory_kube.get(VOLUME_BACKUP, name, NS)

    b1 = back_up("b1")
    assert b1["status"]["phase"] == "Completed" and b1["status"]["progress"] == 100
    assert b1["status"]["backupId"] and "parentBackupId" not in b1["status"]
    assert [e["reason"] for e in memory_kube.events_for(b1)] == ["Scheduled", "Started", "Completed"]

    write_pattern(vol.path, 7, [8 * MiB])  # change one region after the first backup
    b2 = back_up("b2")
    assert b2["status"]["parentBackupId"] == b1["status"]["backupId"]
    assert b2["status"]["bytesDone"] < b1["status"]["bytesDone"]
    # only the newest backup snapshot is kept, as the next parent
    assert [s.name for s in pool.list_snapshots("pvc-src")] == [b2["status"]["snapshot"]]

    r = memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                            "metadata": {"name": "r1", "namespace": NS},
                            "spec": {"backup": "b1", "persistentVolumeClaimName": "restored"}})
    assert assign_restore(memory_kube, r, fake_clock).outcome == "done"
    r = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    result = run_restore(memory_kube, r, node, NODE, fake_clock)
    assert result.outcome == "done", result
    r = memory_kube.get(VOLUME_RESTORE, "r1", NS)
    assert r["status"]["phase"] == "Completed"
    pool_name, _, restored_name = r["status"]["volumeHandle"].partition("/")
    restored = node.pool(pool_name).get_volume(restored_name)
    for off, block in first.items():  # b1's bytes, not the later change
        assert read_at(restored.path, off, len(block)) == block
    pvc = memory_kube.get(PVC, "restored", NS)
    pv = memory_kube.get(PV, pvc["spec"]["volumeName"])
    assert pv["spec"]["csi"]["volumeHandle"] == r["status"]["volumeHandle"]
    assert pv["spec"]["claimRef"]["name"] == "restored"
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "csi.statehold.io"
    # a retry after completion does nothing more
    assert run_restore(memory_kube, r, node, NODE, fake_clock).outcome == "skipped"


def test_wrong_repository_password_fails_the_backup(
        memory_kube: MemoryKube, node: Node, pool_obj: dict, scratch: Path, fake_clock: Any) -> None:
    pool = node.pool("fast")
    vol = pool.create_volume("pvc-a", 16 * MiB, mode=VolumeMode.BLOCK, fs=None)
    write_pattern(vol.path, 3, [0])
    secret(memory_kube, "pw", password="one")
    secret(memory_kube, "pw2", password="two")
    path_target(memory_kube, "t", path=str(scratch / "repo"))
    path_target(memory_kube, "t2", path=str(scratch / "repo"), password_secret="pw2")
    bound_pvc(memory_kube, "data", node=NODE, pool="fast", volume="pvc-a", size="16Mi")
    for name, target in (("ok", "t"), ("bad", "t2")):
        vb = volume_backup(memory_kube, name, "data", target=target)
        assign_backup(memory_kube, vb, fake_clock)
        run_backup(memory_kube, memory_kube.get(VOLUME_BACKUP, name, NS), node, NODE, fake_clock)
    bad = memory_kube.get(VOLUME_BACKUP, "bad", NS)
    assert bad["status"]["phase"] == "Failed"
    assert ready(bad)["reason"] == "PermissionDenied"


def test_backup_to_an_s3_target_uses_the_credentials_secret(
        memory_kube: MemoryKube, node: Node, pool_obj: dict, s3_config: Any, fake_clock: Any) -> None:
    pool = node.pool("fast")
    vol = pool.create_volume("pvc-s3", 16 * MiB, mode=VolumeMode.BLOCK, fs=None)
    data = write_pattern(vol.path, 5, [0, 4 * MiB])
    secret(memory_kube, "pw", password="s3 password")
    secret(memory_kube, "s3-creds", accessKeyId=s3_config.access_key,
           secretAccessKey=s3_config.secret_key)
    memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
                        "metadata": {"name": "s3", "namespace": NS},
                        "spec": {"s3": {"endpoint": s3_config.endpoint, "bucket": s3_config.bucket,
                                        "prefix": "cluster", "credentialsSecretRef": {"name": "s3-creds"}},
                                 "passwordSecretRef": {"name": "pw"}}})
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data", node=NODE, pool="fast", volume="pvc-s3", size="16Mi")
    vb = volume_backup(memory_kube, "b1", "data", target="s3")
    assert assign_backup(memory_kube, vb, fake_clock).outcome == "done"
    result = run_backup(memory_kube, memory_kube.get(VOLUME_BACKUP, "b1", NS), node, NODE, fake_clock)
    assert result.outcome == "done", result
    r = memory_kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                            "metadata": {"name": "r1", "namespace": NS},
                            "spec": {"backup": "b1", "persistentVolumeClaimName": "copy"}})
    assign_restore(memory_kube, r, fake_clock)
    result = run_restore(memory_kube, memory_kube.get(VOLUME_RESTORE, "r1", NS), node, NODE, fake_clock)
    assert result.outcome == "done", result
    handle = memory_kube.get(VOLUME_RESTORE, "r1", NS)["status"]["volumeHandle"]
    restored = node.pool(handle.partition("/")[0]).get_volume(handle.partition("/")[2])
    for off, block in data.items():
        assert read_at(restored.path, off, len(block)) == block


def test_s3_target_is_checked_by_opening_its_repository(memory_kube: MemoryKube, s3_config: Any,
                                                         fake_clock: Any) -> None:
    from statehold.controller.target_status import reconcile_target
    from statehold.kube.kinds import BACKUP_TARGET

    secret(memory_kube, "pw", password="right")
    secret(memory_kube, "good", accessKeyId=s3_config.access_key, secretAccessKey=s3_config.secret_key)
    secret(memory_kube, "bad", accessKeyId=s3_config.access_key, secretAccessKey="wrong")

    def target(name: str, creds: str) -> dict:
        return memory_kube.create({
            "apiVersion": "statehold.io/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"s3": {"endpoint": s3_config.endpoint, "bucket": s3_config.bucket,
                            "prefix": "probe", "credentialsSecretRef": {"name": creds}},
                     "passwordSecretRef": {"name": "pw"}}})

    assert reconcile_target(memory_kube, target("ok", "good"), fake_clock).outcome == "done"
    ok = memory_kube.get(BACKUP_TARGET, "ok", NS)
    assert ok["status"]["phase"] == "Ready" and "first backup" in ready(ok)["message"]
    assert reconcile_target(memory_kube, target("denied", "bad"), fake_clock).outcome == "retry"
    denied = memory_kube.get(BACKUP_TARGET, "denied", NS)
    assert ready(denied)["reason"] == "AccessDenied"
    assert [e["reason"] for e in memory_kube.events_for(denied)] == ["AccessDenied"]
