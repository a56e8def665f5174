"""Autoexpansion on a real filesystem: an XFS volume served by the real CSI socket fills past
its claim's threshold while an application keeps its file open and writing; the node
agent's pass patches the claim (MemoryKube), the resizer's calls (ControllerExpandVolume,
then NodeExpandVolume, as csi-resizer and kubelet make them) grow it online, and the writer
goes on writing into the new space. Filled again, it grows to the ceiling, then stops with
the claim's condition and one Warning Event.

The writer writes only when told (a number of MiB on its stdin) and answers with its total,
so the fill level at each pass is exact and no step depends on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from statehold.controller import autoexpand
from statehold.csi.gen import csi_pb2 as pb
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.kube.kinds import PVC
from statehold.kube.memory import MemoryKube
from tests.integration.csi.harness import Driver, MiB, mount_cap

pytestmark = [pytest.mark.root]

WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
chunk = os.urandom(1 << 20)
total = 0
for line in sys.stdin:
    for _ in range(int(line)):
        os.write(fd, chunk)
        total += 1
    os.fsync(fd)
    print(total, flush=True)
os.close(fd)
"""


class Writer:
    """An application with its file open on the volume the whole time."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, mib: int) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mib}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the writer died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return int(line)

    def stop(self) -> int:
        _out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def fs_numbers(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize


def fill_to(writer: Writer, path: Path, percent: int) -> None:
    """Write until the filesystem says at least ``percent`` is used (XFS's speculative
    preallocation makes "used" move by more or less than what was written)."""
    while True:
        total, used = fs_numbers(path)
        if used * 100 >= total * percent:
            return
        writer.write(max(1, min(16, (total * percent // 100 - used) // MiB)))


@pytest.fixture
def claim(driver: Driver, pool: Pool) -> Iterator[tuple[str, Path, Path]]:
    """A 512 MiB xfs volume as the provisioner makes it, staged and published at a pod path."""
    made = driver.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-grow", capacity_range=pb.CapacityRange(required_bytes=512 * MiB),
        volume_capabilities=[mount_cap("xfs")],
        parameters={autoexpand.THRESHOLD: "80%", autoexpand.STEP: "25%", autoexpand.MAX: "800Mi"}))
    vid = made.volume.volume_id
    staging = driver.staging("pvc-grow")
    target = driver.kubelet / "pods" / "0f1e2d3c-aaaa-bbbb-cccc-000000000001" / "volumes" / "mount"
    driver.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=str(staging), volume_capability=mount_cap("xfs")))
    driver.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=str(staging), target_path=str(target),
        volume_capability=mount_cap("xfs")))
    try:
        yield vid, staging, target
    finally:
        driver.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)))
        driver.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=str(staging)))


def test_a_filling_xfs_claim_grows_online_while_written_then_stops_at_its_ceiling(
        driver: Driver, node: Node, pool: Pool, claim: tuple[str, Path, Path]) -> None:
    vid, staging, target = claim
    kube = MemoryKube()
    kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "grow"},
                 "provisioner": "csi.statehold.io", "allowVolumeExpansion": True,
                 "parameters": {autoexpand.THRESHOLD: "80%", autoexpand.STEP: "25%",
                                autoexpand.MAX: "800Mi"}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-grow"},
                 "spec": {"csi": {"driver": "csi.statehold.io", "volumeHandle": vid, "fsType": "xfs"},
                          "capacity": {"storage": "512Mi"},
                          "claimRef": {"name": "data", "namespace": "app"}}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "data", "namespace": "app"},
                 "spec": {"storageClassName": "grow", "resources": {"requests": {"storage": "512Mi"}}}})
    kube.patch_status(PVC, "data", {"phase": "Bound", "capacity": {"storage": "512Mi"}}, "app")

    def agent_pass() -> autoexpand.Report:
        return autoexpand.autoexpand_pass(kube, node, "node-a", lambda: datetime.now(UTC))["app/data"]

    def resizer() -> int:
        """csi-resizer and kubelet: ControllerExpandVolume, NodeExpandVolume, then the claim's
        status.capacity. Returns the new request in bytes."""
        pvc = kube.get(PVC, "data", "app")
        wanted = pvc["spec"]["resources"]["requests"]["storage"]
        size = int(wanted.removesuffix("Mi")) * MiB
        cap = mount_cap("xfs")
        driver.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=size), volume_capability=cap))
        driver.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=str(target), capacity_range=pb.CapacityRange(required_bytes=size),
            volume_capability=cap))
        kube.patch_status(PVC, "data", {"capacity": {"storage": wanted}}, "app")
        return size

    writer = Writer(target / "log")
    try:
        fill_to(writer, target, 50)
        assert agent_pass().outcome == "within"

        fill_to(writer, target, 85)
        first = agent_pass()
        assert first.outcome == "grown", first
        assert kube.get(PVC, "data", "app")["spec"]["resources"]["requests"]["storage"] == "640Mi"
        assert agent_pass().outcome == "resizing"
        before, _ = fs_numbers(target)
        assert resizer() == 640 * MiB
        after, _used = fs_numbers(target)
        assert after > before + 120 * MiB  # the filesystem itself grew, online
        assert writer.proc.poll() is None  # the application never stopped
        # and writes on: its one file ends up larger than the whole filesystem was
        written = writer.write((before - (target / "log").stat().st_size) // MiB + 16)
        assert (target / "log").stat().st_size == written * MiB > before

        fill_to(writer, target, 90)
        assert agent_pass().outcome == "grown"
        assert kube.get(PVC, "data", "app")["spec"]["resources"]["requests"]["storage"] == "800Mi"
        assert resizer() == 800 * MiB
        fill_to(writer, target, 90)
        stopped = agent_pass()
        assert stopped.outcome == "stopped" and "ceiling" in stopped.message
        assert agent_pass().outcome == "stopped"

        pvc = kube.get(PVC, "data", "app")
        assert pvc["spec"]["resources"]["requests"]["storage"] == "800Mi"
        cond = autoexpand.find(pvc["status"]["conditions"], autoexpand.CONDITION)
        assert cond is not None and (cond["status"], cond["reason"]) == ("True", "CeilingReached")
        assert [e["reason"] for e in kube.events_for(pvc)] == [
            "AutoExpanded", "AutoExpanded", "AutoExpandCeilingReached"]
        assert pool.get_volume(vid.split("/")[1]).size == 800 * MiB
        assert writer.stop() == 0
    finally:
        writer.kill()
    assert staging.is_dir()
