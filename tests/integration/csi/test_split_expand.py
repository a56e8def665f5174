"""Expansion in the cluster set-up: csi-resizer talks to a controller-only process that
holds no pools; the node plugin that holds the volume does the growing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.integration.csi.harness import NODE_ID, GiB, MiB, code_of, mount_cap, running_driver

pytestmark = [pytest.mark.root]


def test_central_controller_defers_expansion_to_the_node_holding_the_volume(
    node: Node, pool: Pool, scratch: Path
) -> None:
    empty = Node(scratch / "controller-home")  # the controller Deployment's host: no pools
    try:
        with running_driver(node, node.home, mode="node") as plugin, \
                running_driver(empty, scratch / "controller", mode="controller") as central:
            vol = pool.create_volume("grow-me", 256 * MiB)
            cap = mount_cap("xfs")
            staging = plugin.staging("grow-me")
            plugin.node.NodeStageVolume(pb.NodeStageVolumeRequest(
                volume_id=vol.id, staging_target_path=str(staging), volume_capability=cap))
            try:
                answer = central.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
                    volume_id=vol.id, capacity_range=pb.CapacityRange(required_bytes=1 * GiB),
                    volume_capability=cap))
                assert answer.node_expansion_required and answer.capacity_bytes == 1 * GiB
                assert pool.get_volume("grow-me").size == vol.size < 1 * GiB  # nothing happened yet

                grown = plugin.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
                    volume_id=vol.id, volume_path=str(staging),
                    capacity_range=pb.CapacityRange(required_bytes=1 * GiB), volume_capability=cap))
                assert grown.capacity_bytes == 1 * GiB
                assert pool.get_volume("grow-me").size == 1 * GiB
                stats = plugin.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
                    volume_id=vol.id, volume_path=str(staging)))
                total = next(u.total for u in stats.usage if u.unit == pb.VolumeUsage.BYTES)
                assert total > 900 * MiB  # the filesystem itself grew, online
            finally:
                plugin.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
                    volume_id=vol.id, staging_target_path=str(staging)))

            # the limit still binds, and a malformed id still names nothing
            over = pb.ControllerExpandVolumeRequest(
                volume_id=vol.id,
                capacity_range=pb.CapacityRange(required_bytes=2 * GiB + 1, limit_bytes=2 * GiB + 1))
            assert code_of(central.controller.ControllerExpandVolume, over) == grpc.StatusCode.OUT_OF_RANGE
            bad = pb.ControllerExpandVolumeRequest(
                volume_id="no-slash", capacity_range=pb.CapacityRange(required_bytes=GiB))
            assert code_of(central.controller.ControllerExpandVolume, bad) == grpc.StatusCode.NOT_FOUND
    finally:
        empty.close()


def test_all_in_one_driver_still_answers_not_found_for_an_unknown_volume(node: Node, pool: Pool) -> None:
    with running_driver(node, node.home, mode="all") as d:
        req = pb.ControllerExpandVolumeRequest(
            volume_id=f"{pool.name}/nope", capacity_range=pb.CapacityRange(required_bytes=GiB))
        assert code_of(d.controller.ControllerExpandVolume, req) == grpc.StatusCode.NOT_FOUND
    assert NODE_ID
