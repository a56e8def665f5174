"""Whole flows through the CSI socket, in the order kubelet and the sidecars call."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import NODE_ID, Driver, GiB, block_cap, mount_cap

pytestmark = [pytest.mark.root]

TOPOLOGY = {"topology.statehold.io/node": NODE_ID}


def _create(d: Driver, name: str, size: int, cap: pb.VolumeCapability, **kw: object) -> pb.Volume:
    req = pb.CreateVolumeRequest(
        name=name,
        capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=[cap],
        parameters={"csi.storage.k8s.io/fstype": "xfs"} if cap.HasField("mount") else {},
        accessibility_requirements=pb.TopologyRequirement(requisite=[pb.Topology(segments=TOPOLOGY)]),
        **kw,  # type: ignore[arg-type]
    )
    first = d.controller.CreateVolume(req).volume
    again = d.controller.CreateVolume(req).volume  # the provisioner retries: same answer
    assert again == first
    return first


def _stage_publish(d: Driver, vol: pb.Volume, cap: pb.VolumeCapability, tag: str, ro: bool = False) -> Path:
    staging, target = d.staging(tag), d.target(tag)
    stage = pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id,
        staging_target_path=str(staging),
        volume_capability=cap,
        volume_context=vol.volume_context,
    )
    d.node.NodeStageVolume(stage)
    d.node.NodeStageVolume(stage)  # idempotent
    publish = pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id,
        staging_target_path=str(staging),
        target_path=str(target),
        volume_capability=cap,
        readonly=ro,
        volume_context=vol.volume_context,
    )
    d.node.NodePublishVolume(publish)
    d.node.NodePublishVolume(publish)  # idempotent
    return target


def _unpublish_unstage(d: Driver, vol: pb.Volume, tag: str) -> None:
    target, staging = d.target(tag), d.staging(tag)
    for _ in range(2):  # idempotent
        d.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target))
        )
    assert not target.exists()
    for _ in range(2):
        d.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
        )
    assert not os.path.ismount(staging)


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_filesystem_volume_full_lifecycle(driver: Driver) -> None:
    d = driver
    cap = mount_cap("xfs")
    vol = _create(d, "pvc-data", 1 * GiB, cap)
    assert vol.capacity_bytes == 1 * GiB
    assert [dict(t.segments) for t in vol.accessible_topology] == [TOPOLOGY]

    target = _stage_publish(d, vol, cap, "data")
    (target / "table.dat").write_bytes(b"row-1\n" * 1000)
    os.sync()

    snap_req = pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="snap-data-1")
    snap = d.controller.CreateSnapshot(snap_req).snapshot
    assert d.controller.CreateSnapshot(snap_req).snapshot.snapshot_id == snap.snapshot_id
    assert snap.ready_to_use and snap.source_volume_id == vol.volume_id

    (target / "table.dat").write_bytes(b"changed after the snapshot\n")

    source = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
    )
    clone = _create(d, "pvc-restore", 1 * GiB, cap, volume_content_source=source)
    assert clone.content_source.snapshot.snapshot_id == snap.snapshot_id
    clone_target = _stage_publish(d, clone, cap, "restore")
    assert (clone_target / "table.dat").read_bytes() == b"row-1\n" * 1000

    grown = d.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=2 * GiB)
        )
    )
    assert grown.capacity_bytes == 2 * GiB
    node_grown = d.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id,
            volume_path=str(target),
            capacity_range=pb.CapacityRange(required_bytes=2 * GiB),
        )
    )
    assert node_grown.capacity_bytes == 2 * GiB

    stats = d.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    usage = {u.unit: u for u in stats.usage}
    assert usage[pb.VolumeUsage.BYTES].total > int(1.9 * GiB)  # the filesystem grew online
    assert usage[pb.VolumeUsage.INODES].total > 0
    assert not stats.volume_condition.abnormal
    assert (target / "table.dat").read_bytes() == b"changed after the snapshot\n"

    _unpublish_unstage(d, clone, "restore")
    _unpublish_unstage(d, vol, "data")
    for v in (clone, vol):
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))  # idempotent
    d.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert list(d.controller.ListVolumes(pb.ListVolumesRequest()).entries) == []
    assert list(d.controller.ListSnapshots(pb.ListSnapshotsRequest()).entries) == []


def test_block_volume_lifecycle(driver: Driver) -> None:
    d = driver
    cap = block_cap()
    vol = _create(d, "pvc-raw", 64 * 1024 * 1024, cap)
    target = _stage_publish(d, vol, cap, "raw")
    assert stat.S_ISBLK(target.stat().st_mode) and _mounted(target)  # the device itself
    payload = os.urandom(4096) * 4
    fd = os.open(target, os.O_RDWR)
    try:
        os.pwrite(fd, payload, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)

    snap = d.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="raw-1")
    ).snapshot
    source = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=vol.volume_id))
    clone = _create(d, "pvc-raw-clone", 64 * 1024 * 1024, cap, volume_content_source=source)
    clone_target = _stage_publish(d, clone, cap, "raw-clone", ro=True)
    with open(clone_target, "rb") as f:
        f.seek(8192)
        assert f.read(len(payload)) == payload
    with pytest.raises(OSError), open(clone_target, "r+b") as f:
        f.write(b"x")

    stats = d.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert stats.usage[0].total == 64 * 1024 * 1024

    _unpublish_unstage(d, clone, "raw-clone")
    _unpublish_unstage(d, vol, "raw")
    for v in (clone, vol):
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
    d.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))


@pytest.mark.parametrize("fs", ["ext4", "btrfs"])
def test_other_filesystems_expand_and_keep_data(driver: Driver, fs: str) -> None:
    d = driver
    cap = mount_cap(fs)
    MiB = 1024 * 1024
    vol = d.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=f"pvc-{fs}",
            volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
        )
    ).volume
    target = _stage_publish(d, vol, cap, fs)
    assert Path("/proc/self/mountinfo").read_text().count(f" - {fs} ") >= 1
    (target / "keep").write_bytes(b"k" * 65536)
    grown = d.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=800 * MiB)
        )
    )
    assert grown.capacity_bytes == 800 * MiB
    node = d.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert node.capacity_bytes == 800 * MiB
    total = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
    if grown.node_expansion_required:  # the kernel refused an online grow: done at next stage
        assert total < 700 * MiB
        _unpublish_unstage(d, vol, fs)
        target = _stage_publish(d, vol, cap, fs)
        total = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
    assert total > 700 * MiB
    assert (target / "keep").read_bytes() == b"k" * 65536
    _unpublish_unstage(d, vol, fs)
    d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_restarted_driver_answers_retries_from_the_mount_table(driver: Driver) -> None:
    """Kubelet retries after a driver restart: the new process (fresh engine Node on the
    same home) must see the staged and published volume as done, and undo it."""
    from statehold.engine.node import Node
    from tests.integration.csi.harness import running_driver

    d = driver
    cap = mount_cap("xfs")
    vol = _create(d, "pvc-restart", 400 * 1024 * 1024, cap)
    target = _stage_publish(d, vol, cap, "restart")
    (target / "f").write_text("before restart")
    d.server.stop(0)
    fresh = Node(d.server.config.home)
    try:
        with running_driver(fresh, d.server.config.home) as d2:
            again = _stage_publish(d2, vol, cap, "restart")  # retried: OK, nothing new mounted
            assert again == target and (target / "f").read_text() == "before restart"
            mounts = Path("/proc/self/mountinfo").read_text().splitlines()
            assert sum(line.split()[4] == str(target) for line in mounts) == 1  # not stacked
            _unpublish_unstage(d2, vol, "restart")
            d2.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
            assert list(d2.controller.ListVolumes(pb.ListVolumesRequest()).entries) == []
    finally:
        fresh.close()
