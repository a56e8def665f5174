"""The CSI GroupController on the real socket: capabilities, the spec's codes, restore from
a member, and a driver SIGKILLed while a group holds its members frozen."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.fixtures.engine import release_home
from tests.integration.csi.harness import Driver, MiB, block_cap, code_of, mount_cap
from tests.integration.engine.frozen import frozen_targets, wait_group_gone

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("group_driver_child.py")
OK = grpc.StatusCode.OK
GROUP_RPC = pb.GroupControllerServiceCapability.RPC


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.controller = rpc.ControllerStub(channel)
        self.node = rpc.NodeStub(channel)
        self.group = rpc.GroupControllerStub(channel)


def make(s: Stubs, name: str, cap: pb.VolumeCapability | None = None) -> pb.Volume:
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap or mount_cap("xfs")],
                                 capacity_range=pb.CapacityRange(required_bytes=300 * MiB))
    return s.controller.CreateVolume(req).volume


def stage(s: Stubs, vol: pb.Volume, staging: Path, cap: pb.VolumeCapability | None = None) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    s.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging),
        volume_capability=cap or mount_cap("xfs")))
    return staging


def create_req(name: str, vols: list[pb.Volume], **params: str
               ) -> pb.CreateVolumeGroupSnapshotRequest:
    return pb.CreateVolumeGroupSnapshotRequest(
        name=name, source_volume_ids=[v.volume_id for v in vols], parameters=params)


@contextlib.contextmanager
def volumes(s: Stubs, root: Path, names: list[str], *, block: str = "") -> Iterator[
        tuple[list[pb.Volume], list[Path]]]:
    """Staged volumes (XFS, and ``block`` as a block volume); unstaged and deleted after."""
    vols, stagings = [], []
    try:
        for name in names:
            cap = block_cap() if name == block else mount_cap("xfs")
            vol = make(s, name, cap)
            vols.append(vol)
            stagings.append(stage(s, vol, root / "staging" / name, cap))
        yield vols, stagings
    finally:
        for vol, staging in zip(vols, stagings, strict=False):
            s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                volume_id=vol.volume_id, staging_target_path=str(staging)))
        for vol in vols:
            s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_the_group_controller_is_advertised(driver: Driver) -> None:
    s = Stubs(driver.channel)
    caps = s.group.GroupControllerGetCapabilities(pb.GroupControllerGetCapabilitiesRequest())
    assert [c.rpc.type for c in caps.capabilities] == [GROUP_RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]
    plugin = driver.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    assert pb.PluginCapability.Service.GROUP_CONTROLLER_SERVICE in {
        c.service.type for c in plugin if c.HasField("service")}


def test_create_get_restore_delete_a_group(driver: Driver) -> None:
    s = Stubs(driver.channel)
    with volumes(s, driver.kubelet, ["pvc-ga", "pvc-gb", "pvc-gk"], block="pvc-gk") as (vols, st):
        (st[0] / "data").write_bytes(b"a" * 8192)
        (st[1] / "data").write_bytes(b"b" * 8192)
        ids = {v.volume_id for v in vols}
        name = "groupsnapshot-3f7e2c1a-0000-4000-8000-00000000abcd"
        got = s.group.CreateVolumeGroupSnapshot(create_req(name, vols, freezeTimeout="30s"))
        gs = got.group_snapshot
        assert gs.ready_to_use and gs.group_snapshot_id and gs.creation_time.seconds > 0
        assert {m.source_volume_id for m in gs.snapshots} == ids
        assert all(m.group_snapshot_id == gs.group_snapshot_id and m.ready_to_use
                   for m in gs.snapshots)
        member_ids = [m.snapshot_id for m in gs.snapshots]
        # a retry is the same group; the name with other volumes is ALREADY_EXISTS
        assert s.group.CreateVolumeGroupSnapshot(create_req(name, vols)).group_snapshot == gs
        assert code_of(s.group.CreateVolumeGroupSnapshot,
                       create_req(name, vols[:2])) == grpc.StatusCode.ALREADY_EXISTS
        # get, with and without the member list; a wrong list is INVALID_ARGUMENT
        get = pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id,
                                               snapshot_ids=member_ids)
        assert s.group.GetVolumeGroupSnapshot(get).group_snapshot == gs
        get_all = pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id)
        assert s.group.GetVolumeGroupSnapshot(get_all).group_snapshot == gs
        wrong = pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id,
                                                 snapshot_ids=member_ids[:2])
        assert code_of(s.group.GetVolumeGroupSnapshot, wrong) == grpc.StatusCode.INVALID_ARGUMENT
        # members are ordinary snapshots: listed, and a volume restores from one
        listed = {e.snapshot.snapshot_id for e in s.controller.ListSnapshots(
            pb.ListSnapshotsRequest()).entries}
        assert set(member_ids) <= listed
        (member,) = [m for m in gs.snapshots if m.source_volume_id == vols[0].volume_id]
        restored = s.controller.CreateVolume(pb.CreateVolumeRequest(
            name="pvc-grestore", volume_capabilities=[mount_cap("xfs")],
            volume_content_source=pb.VolumeContentSource(
                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=member.snapshot_id)))
        ).volume
        rst = stage(s, restored, driver.kubelet / "staging" / "pvc-grestore")
        try:
            assert (rst / "data").read_bytes() == b"a" * 8192
        finally:
            s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                volume_id=restored.volume_id, staging_target_path=str(rst)))
            s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=restored.volume_id))
        # delete: a wrong list is refused; then gone, and gone again is OK
        bad = pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id,
                                                  snapshot_ids=["test/other"])
        assert code_of(s.group.DeleteVolumeGroupSnapshot, bad) == grpc.StatusCode.INVALID_ARGUMENT
        delete = pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gs.group_snapshot_id,
                                                     snapshot_ids=member_ids)
        assert code_of(s.group.DeleteVolumeGroupSnapshot, delete) == OK
        assert code_of(s.group.DeleteVolumeGroupSnapshot, delete) == OK
        assert code_of(s.group.GetVolumeGroupSnapshot, get) == grpc.StatusCode.NOT_FOUND
        assert code_of(s.controller.GetSnapshot, pb.GetSnapshotRequest(
            snapshot_id=member_ids[0])) == grpc.StatusCode.NOT_FOUND


def test_create_refuses_what_cannot_be_one_group(driver: Driver) -> None:
    s = Stubs(driver.channel)
    with volumes(s, driver.kubelet, ["pvc-gr1", "pvc-gr2"]) as (vols, _):
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        create = s.group.CreateVolumeGroupSnapshot
        assert code_of(create, create_req("", vols)) == invalid
        assert code_of(create, create_req("g", [])) == invalid
        assert code_of(create, create_req("g", [vols[0], vols[0]])) == invalid
        for timeout in ("0s", "11m", "soon"):
            assert code_of(create, create_req("g", vols, freezeTimeout=timeout)) == invalid
        # a member on another node (its pool is not here): cannot be one instant from here
        elsewhere = pb.Volume(volume_id="otherpool/pvc-far")
        assert code_of(create, create_req("g", [vols[0], elsewhere])) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert code_of(create, create_req("g", [elsewhere])) == grpc.StatusCode.NOT_FOUND
        assert code_of(create, create_req("g", [vols[0], pb.Volume(volume_id="test/pvc-none")])) \
            == grpc.StatusCode.NOT_FOUND
        assert code_of(create, create_req("g", [vols[0], pb.Volume(volume_id="shared/x/y")])) \
            == grpc.StatusCode.FAILED_PRECONDITION
        assert code_of(s.group.GetVolumeGroupSnapshot, pb.GetVolumeGroupSnapshotRequest()) == invalid
        assert code_of(s.group.DeleteVolumeGroupSnapshot,
                       pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="test/none")) == OK
        assert code_of(s.group.GetVolumeGroupSnapshot, pb.GetVolumeGroupSnapshotRequest(
            group_snapshot_id="malformed")) == grpc.StatusCode.NOT_FOUND
        assert s.controller.ListSnapshots(pb.ListSnapshotsRequest()).entries == []


# -- SIGKILL of the driver process while a group holds its members frozen --------------------

def _start(home: Path, sock: Path, kubelet: Path, *, pause: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(CHILD), str(home), str(sock), str(kubelet)]
    child = subprocess.Popen(argv + ([] if pause else ["--no-pause"]), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout is not None
    assert child.stdout.readline() == b"serving\n"
    return child


def test_sigkill_of_the_driver_mid_freeze_leaves_every_member_thawed(
        node: Node, pool: Pool, engine_home: Path) -> None:
    kubelet = Path(f"{engine_home}-gkubelet")
    sock = engine_home / "gcsi" / "csi.sock"
    children: list[subprocess.Popen[bytes]] = []
    try:
        first = _start(engine_home, sock, kubelet, pause=True)
        children.append(first)
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            s = Stubs(channel)
            vols = [make(s, f"pvc-kill{i}") for i in range(2)]
            stagings = [stage(s, v, kubelet / "staging" / f"k{i}") for i, v in enumerate(vols)]
            pending = s.group.CreateVolumeGroupSnapshot.future(create_req("groupsnapshot-kill", vols))
            assert first.stdout is not None and first.stdout.readline() == b"frozen\n"
            first.send_signal(signal.SIGKILL)
            first.wait()
            # the keeper outlives the driver and thaws: every member takes writes again
            assert frozen_targets([str(p) for p in stagings]) == []
            assert wait_group_gone(first.pid) == []
            with pytest.raises(grpc.RpcError) as failed:
                pending.result(timeout=60)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        second = _start(engine_home, sock, kubelet, pause=False)  # recovery ran on open
        children.append(second)
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            s = Stubs(channel)
            gs = s.group.CreateVolumeGroupSnapshot(
                create_req("groupsnapshot-kill", vols)).group_snapshot
            assert gs.ready_to_use and len(gs.snapshots) == 2
            s.group.DeleteVolumeGroupSnapshot(pb.DeleteVolumeGroupSnapshotRequest(
                group_snapshot_id=gs.group_snapshot_id))
            for vol, staging in zip(vols, stagings, strict=True):
                s.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path=str(staging)))
                s.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for child in children:  # ours, by pid
            if child.poll() is None:
                child.kill()
                child.wait()
        release_home(kubelet)
        shutil.rmtree(kubelet, ignore_errors=True)
