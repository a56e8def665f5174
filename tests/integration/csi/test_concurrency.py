"""Concurrent calls through the socket: same volume -> one wins, the rest ABORTED or OK
(never two volumes); different volumes proceed in parallel."""

from __future__ import annotations

import threading

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import Driver, MiB, code_of, mount_cap

pytestmark = [pytest.mark.root]


def run_all(n: int, fn) -> list[grpc.StatusCode]:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)
    codes: list[grpc.StatusCode] = [grpc.StatusCode.UNKNOWN] * n

    def work(i: int) -> None:
        barrier.wait(30)
        codes[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return codes


def test_racing_creates_of_one_name_make_one_volume(driver: Driver) -> None:
    req = pb.CreateVolumeRequest(
        name="pvc-race",
        volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
    )
    codes = run_all(8, lambda _i: code_of(driver.controller.CreateVolume, req))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    assert grpc.StatusCode.OK in codes
    entries = driver.controller.ListVolumes(pb.ListVolumesRequest()).entries
    assert [e.volume.volume_id for e in entries] == ["test/pvc-race"]


def test_different_volumes_stage_in_parallel(driver: Driver) -> None:
    n = 4
    vols = [
        driver.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name=f"pvc-par-{i}",
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
            )
        ).volume
        for i in range(n)
    ]
    stagings = [driver.staging(f"par-{i}") for i in range(n)]

    def stage(i: int) -> grpc.StatusCode:
        req = pb.NodeStageVolumeRequest(
            volume_id=vols[i].volume_id, staging_target_path=str(stagings[i]), volume_capability=mount_cap()
        )
        return code_of(driver.node.NodeStageVolume, req)

    try:
        assert run_all(n, stage) == [grpc.StatusCode.OK] * n
    finally:
        for i in range(n):
            driver.node.NodeUnstageVolume(
                pb.NodeUnstageVolumeRequest(volume_id=vols[i].volume_id, staging_target_path=str(stagings[i]))
            )
