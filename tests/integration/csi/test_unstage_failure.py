"""NodeUnstageVolume when the unmount shuts the filesystem down (issue 18, defect 5).

A volume larger than its pool, filled until the pool is out of space: XFS cannot write its
metadata back at unmount ("metadata I/O error ... error 28", "Shutting down filesystem"),
yet ``umount(2)`` returns 0. The driver must say so, and the volume's condition must stay
abnormal until the filesystem is repaired.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.engine import mounts
from statehold.engine.node import Node
from statehold.engine.types import PoolSpec
from tests.integration.csi.harness import Driver, GiB, MiB, code_of, mount_cap, running_driver

pytestmark = [pytest.mark.root]
C = grpc.StatusCode


@pytest.fixture
def small(node: Node) -> Iterator[Driver]:
    """A driver over a 512 MiB pool (over-provisioned: it takes a 1 GiB volume)."""
    node.create_pool(PoolSpec(name="tiny", image_size=512 * MiB))
    with running_driver(node, node.home) as d:
        yield d


def fill(directory: Path) -> None:
    """Data until the volume refuses more, then metadata (directories, small files) that
    can only be written back where the full pool has no room."""
    chunk = os.urandom(16 * MiB)
    try:
        for i in range(1024):
            (directory / f"data{i}").write_bytes(chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    try:
        for d in range(64):
            (directory / f"d{d}").mkdir()
            for k in range(256):
                (directory / f"d{d}" / f"s{k}").write_bytes(b"m" * 100)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def test_unstage_reports_a_filesystem_that_shut_down_and_it_stays_abnormal_until_repaired(
    node: Node, small: Driver
) -> None:
    d = small
    cap = mount_cap("xfs")
    vol = d.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-full", volume_capabilities=[cap], parameters={"pool": "tiny"},
        capacity_range=pb.CapacityRange(required_bytes=1 * GiB))).volume
    pool = node.pool("tiny")
    # this test's own file in its own pool: freed later, so that the volume can be repaired
    ballast = pool.mountpoint / "ballast"
    with open(ballast, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 64 * MiB)
    staging = d.staging("full")
    stage = pb.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging),
                                      volume_capability=cap)
    unstage = pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
    stats = pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(staging))
    get = pb.ControllerGetVolumeRequest(volume_id=vol.volume_id)
    d.node.NodeStageVolume(stage)
    fill(staging)

    assert code_of(d.node.NodeUnstageVolume, unstage) == C.FAILED_PRECONDITION
    assert mounts.mount_at(staging) is None  # the unmount itself happened
    assert code_of(d.node.NodeUnstageVolume, unstage) == C.FAILED_PRECONDITION  # still damaged
    assert d.node.NodeGetVolumeStats(stats).volume_condition.abnormal
    assert d.controller.ControllerGetVolume(get).status.volume_condition.abnormal
    assert code_of(d.node.NodeStageVolume, stage) == C.FAILED_PRECONDITION  # not used damaged
    assert mounts.mount_at(staging) is None

    # the admin makes room and repairs the volume offline (the test's own image file)
    ballast.unlink()
    image = pool.mountpoint / "volumes" / "pvc-full.img"
    repair = subprocess.run(["xfs_repair", "-L", "-f", str(image)], capture_output=True, text=True)
    assert repair.returncode == 0, repair.stderr

    assert code_of(d.node.NodeUnstageVolume, unstage) == C.OK
    assert not d.controller.ControllerGetVolume(get).status.volume_condition.abnormal
    d.node.NodeStageVolume(stage)
    try:
        assert not d.node.NodeGetVolumeStats(stats).volume_condition.abnormal
    finally:
        d.node.NodeUnstageVolume(unstage)
