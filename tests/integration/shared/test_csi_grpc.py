"""Shared volumes through the real CSI socket, as kubelet and the sidecars call it:
routing by ``type: shared`` and the ``shared/`` id prefix, gRPC codes, volume condition."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from statehold.csi.backend import BackendConfig
from statehold.csi.backend_local import LocalBackend
from statehold.csi.backend_shared import SharedBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig

pytestmark = pytest.mark.root
MiB = 1024 * 1024
RWX = pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER
ROX = pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY


def cap(mode: int = RWX) -> pb.VolumeCapability:
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


class Stubs:
    def __init__(self, channel: grpc.Channel, kubelet: Path) -> None:
        self.controller = rpc.ControllerStub(channel)
        self.node = rpc.NodeStub(channel)
        self.kubelet = kubelet


@pytest.fixture
def driver(scratch: Path, mounts: list[Path]) -> Iterator[Stubs]:
    home, kubelet = scratch / "home", scratch / "kubelet"
    kubelet.mkdir()
    sock = scratch / "csi.sock"
    bcfg = BackendConfig(home=home, node_id="n1", allowed_roots=(kubelet,))
    cfg = ServerConfig(endpoint=f"unix://{sock}", node_id="n1", home=home, allowed_roots=(kubelet,),
                       grace=1.0)
    server = CsiServer(cfg, local=LocalBackend(bcfg), shared=SharedBackend(bcfg))
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield Stubs(channel, kubelet)
    finally:
        channel.close()
        server.stop(0)


def code(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def create(d: Stubs, name: str, params: dict[str, str], size: int = 4 * MiB,
           source: pb.VolumeContentSource | None = None) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(name=name, capacity_range=pb.CapacityRange(required_bytes=size),
                                  volume_capabilities=[cap()], parameters={"type": "shared", **params},
                                  volume_content_source=source)


def publish(d: Stubs, vol: pb.Volume, tag: str, mounts: list[Path], mode: int = RWX) -> Path:
    staging = d.kubelet / "staging" / tag
    staging.mkdir(parents=True)
    target = d.kubelet / "pods" / tag / "mount"
    target.parent.mkdir(parents=True)
    mounts += [staging, target]
    d.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=cap(mode),
        volume_context=vol.volume_context))
    d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=cap(mode), volume_context=vol.volume_context))
    return target


def test_shared_volume_through_the_socket(driver: Stubs, scratch: Path, mounts: list[Path]) -> None:
    share = scratch / "share"
    share.mkdir()
    params = {"sharedRoot": str(share), "deletionPolicy": "retain"}
    vol = driver.controller.CreateVolume(create(driver, "pvc-1", params)).volume
    assert vol.volume_id.startswith("shared/") and vol.capacity_bytes == 4 * MiB
    assert vol.volume_context["statehold.io/type"] == "shared"

    rw = publish(driver, vol, "rw", mounts)
    ro = publish(driver, vol, "ro", mounts, mode=ROX)
    (rw / "f").write_bytes(os.urandom(6 * MiB))
    with pytest.raises(OSError) as err:
        (ro / "g").write_bytes(b"x")
    assert err.value.errno == errno.EROFS

    stats = driver.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=str(rw)))
    assert stats.volume_condition.abnormal
    by_unit = {u.unit: u for u in stats.usage}
    assert by_unit[pb.VolumeUsage.BYTES].total == 4 * MiB
    assert by_unit[pb.VolumeUsage.BYTES].used >= 6 * MiB

    grown = driver.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=16 * MiB)))
    assert grown.capacity_bytes == 16 * MiB and not grown.node_expansion_required
    stats = driver.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=str(rw)))
    assert not stats.volume_condition.abnormal

    snap = driver.controller.CreateSnapshot(pb.CreateSnapshotRequest(
        source_volume_id=vol.volume_id, name="snap-1")).snapshot
    assert snap.snapshot_id.startswith("shared/") and snap.ready_to_use
    clone = driver.controller.CreateVolume(create(driver, "pvc-2", params, size=16 * MiB,
                                                  source=pb.VolumeContentSource(
                                                      snapshot=pb.VolumeContentSource.SnapshotSource(
                                                          snapshot_id=snap.snapshot_id)))).volume
    assert (share / "pvc-2" / "f").stat().st_size == 6 * MiB
    assert clone.volume_id != vol.volume_id

    for tag in ("rw", "ro"):
        driver.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id, target_path=str(driver.kubelet / "pods" / tag / "mount")))
        driver.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=str(driver.kubelet / "staging" / tag)))
    driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    driver.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))  # idempotent
    assert (share / "pvc-1" / "f").stat().st_size == 6 * MiB  # retained


def test_bad_shared_requests_map_to_codes(driver: Stubs, scratch: Path) -> None:
    share = scratch / "share"
    share.mkdir()
    create_ = driver.controller.CreateVolume
    assert code(create_, create(driver, "pvc-1", {"sharedRoot": str(scratch / "missing")})) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code(create_, create(driver, "pvc-1", {"sharedRoot": str(share), "enforceQuota": "true"})) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code(create_, create(driver, "../../etc", {"sharedRoot": str(share)})) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code(create_, create(driver, "pvc-1", {"sharedRoot": str(share), "deletionPolicy": "x"})) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code(create_, create(driver, "pvc-1", {"source": "127.0.0.9:/v", "fsType": "glusterfs",
                                                  "mountOptions": "volfile-server-port=1"})) == \
        grpc.StatusCode.UNAVAILABLE
    with contextlib.suppress(FileNotFoundError):
        assert [p.name for p in share.iterdir()] in ([], [".statehold"])
    assert not (scratch / "missing").exists()
