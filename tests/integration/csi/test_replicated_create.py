"""CreateVolume with the replication parameters, through the CSI socket on a real pool:
``replicas`` > 1 makes the volume reachable through its copy label (replication.md §8.2)
and says so in its volume context; ``replicas`` 1 (the default) is today's volume."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import NODE_ID, Driver, MiB, code_of, mount_cap

pytestmark = [pytest.mark.root]


def create_req(name: str = "pvc-r", **params: str) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap("xfs")],
                                  capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
                                  parameters=params)


def test_replicated_volume_has_the_copy_label_segment_and_its_context(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req(replicas="2", rpo="1m")).volume
    h16 = hashlib.sha256(vol.volume_id.encode()).hexdigest()[:16]
    assert [dict(t.segments) for t in vol.accessible_topology] == [
        {f"copy.statehold.io/{h16}": "true"}]
    assert vol.volume_context["statehold.io/replicas"] == "2"
    assert vol.volume_context["statehold.io/rpo-seconds"] == "60"
    assert vol.volume_context["statehold.io/node"] == NODE_ID
    # a retry answers the same, GetVolume and ListVolumes too
    again = driver.controller.CreateVolume(create_req(replicas="2", rpo="1m")).volume
    assert again == vol
    listed = {e.volume.volume_id: e.volume for e in
              driver.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert list(listed[vol.volume_id].accessible_topology) == list(vol.accessible_topology)


def test_one_copy_is_todays_volume(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req("pvc-one", replicas="1")).volume
    assert [dict(t.segments) for t in vol.accessible_topology] == [
        {"topology.statehold.io/node": NODE_ID}]
    assert "statehold.io/replicas" not in vol.volume_context


@pytest.mark.parametrize("params", [{"replicas": "0"}, {"replicas": "many"},
                                    {"replicas": "2", "rpo": "soon"}, {"rpo": "0s"}])
def test_bad_replication_parameters_are_invalid_argument(driver: Driver,
                                                         params: dict[str, str]) -> None:
    assert code_of(driver.controller.CreateVolume, create_req(**params)) == (
        grpc.StatusCode.INVALID_ARGUMENT)
    assert list(driver.controller.ListVolumes(pb.ListVolumesRequest()).entries) == []


def test_same_name_other_replica_count_is_already_exists(driver: Driver) -> None:
    driver.controller.CreateVolume(create_req(replicas="2"))
    assert code_of(driver.controller.CreateVolume, create_req(replicas="3")) == (
        grpc.StatusCode.ALREADY_EXISTS)
    assert code_of(driver.controller.CreateVolume, create_req()) == grpc.StatusCode.ALREADY_EXISTS
