"""Requests with ``type: shared`` (and ``shared/`` ids) reach the shared backend through the
same servicers; local volumes keep working beside them. Skipped when the shared backend
module is absent (the local driver never depends on it)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.integration.csi.harness import Driver, MiB, mount_cap, running_driver

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        importlib.util.find_spec("statehold.csi.backend_shared") is None, reason="no shared backend"
    ),
]

RWX = pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER


@pytest.fixture
def both(node: Node, pool: Pool) -> Iterator[Driver]:
    with running_driver(node, node.home, shared=True) as d:
        assert d.server.router.shared is not None
        yield d


def test_shared_and_local_volumes_side_by_side(both: Driver, engine_home: Path) -> None:
    d = both
    share = engine_home / "share"
    share.mkdir()
    cap = mount_cap(mode=RWX)
    shared = d.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="pvc-files",
            volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
            parameters={"type": "shared", "sharedRoot": str(share)},
        )
    ).volume
    assert shared.volume_id.startswith("shared/")
    local = d.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="pvc-db",
            volume_capabilities=[mount_cap()],
            capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
        )
    ).volume
    assert local.volume_id == "test/pvc-db"
    listed = {e.volume.volume_id for e in d.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert {shared.volume_id, local.volume_id} <= listed

    staging, target = d.staging("files"), d.target("files")
    d.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=shared.volume_id,
            staging_target_path=str(staging),
            volume_capability=cap,
            volume_context=shared.volume_context,
        )
    )
    d.node.NodePublishVolume(
        pb.NodePublishVolumeRequest(
            volume_id=shared.volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=cap,
            volume_context=shared.volume_context,
        )
    )
    (target / "upload.txt").write_text("through the shared backend")
    d.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=shared.volume_id, target_path=str(target))
    )
    d.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=shared.volume_id, staging_target_path=str(staging))
    )
    assert any(p.name == "upload.txt" for p in share.rglob("upload.txt"))
    for vid in (shared.volume_id, local.volume_id):
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert list(d.controller.ListVolumes(pb.ListVolumesRequest()).entries) == []
