"""Benchmark: CSI provisioning latency of a 10 GiB xfs volume through the driver's socket.

One run = CreateVolume + NodeStageVolume (loop attach, mkfs.xfs, mount) + NodePublishVolume
(bind mount), timed at the gRPC client, over a real unix socket against a real file-backed
pool. 20 runs; each volume is unpublished, unstaged and deleted outside the timed part.
The goal is p50 < 1 s, so the last line is ``ratio=<p50 seconds / 1.0>``. For context the
same work done by hand with the raw tools (truncate, losetup, mkfs.xfs, mount, mount
--bind) is timed in the same run.

Run as root: ``.venv/bin/python bench/csi_provision.py``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from statehold.csi.backend import BackendConfig
from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node
from statehold.engine.types import GiB, PoolSpec

RUNS = 20
SIZE = 10 * GiB
CAP = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
    access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def raw_tools_baseline(root: Path, runs: int) -> list[float]:
    """The same steps by hand: sparse file, loop (direct I/O), mkfs.xfs, mount, bind."""
    times = []
    for i in range(runs):
        img, stage, target = root / f"raw{i}.img", root / f"rs{i}", root / f"rt{i}"
        stage.mkdir()
        target.mkdir()
        t0 = time.perf_counter()
        with open(img, "wb") as f:
            f.truncate(SIZE)
        dev = sh("losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", str(img))
        try:
            sh("mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev)
            sh("mount", dev, str(stage))
            sh("mount", "--bind", str(stage), str(target))
            times.append(time.perf_counter() - t0)
        finally:
            subprocess.run(["umount", str(target)], check=False, capture_output=True)
            subprocess.run(["umount", str(stage)], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)
            img.unlink()
    return times


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="statehold-bench-csi-", dir="/var/tmp"))
    home = base / "home"  # the driver refuses node paths inside its own home: kubelet is beside it
    node = Node(home)
    server: CsiServer | None = None
    try:
        node.create_pool(PoolSpec(name="bench", image_size=4 * GiB))
        kubelet = base / "kubelet"
        kubelet.mkdir()
        sock = home / "csi.sock"
        cfg = ServerConfig(endpoint=f"unix://{sock}", node_id="bench", home=home, allowed_roots=(kubelet,))
        local = LocalBackend(BackendConfig(home=home, node_id="bench", allowed_roots=(kubelet,)), node=node)
        server = CsiServer(cfg, local=local, with_shared=False)
        server.start()
        times: list[float] = []
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            ctl, nod = rpc.ControllerStub(ch), rpc.NodeStub(ch)
            for i in range(RUNS):
                staging = kubelet / "staging" / f"v{i}"
                staging.mkdir(parents=True)
                target = kubelet / "pods" / f"p{i}" / "mount"
                target.parent.mkdir(parents=True)
                t0 = time.perf_counter()
                vol = ctl.CreateVolume(
                    pb.CreateVolumeRequest(
                        name=f"pvc-bench-{i}",
                        volume_capabilities=[CAP],
                        capacity_range=pb.CapacityRange(required_bytes=SIZE),
                    )
                ).volume
                nod.NodeStageVolume(
                    pb.NodeStageVolumeRequest(
                        volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=CAP
                    )
                )
                nod.NodePublishVolume(
                    pb.NodePublishVolumeRequest(
                        volume_id=vol.volume_id,
                        staging_target_path=str(staging),
                        target_path=str(target),
                        volume_capability=CAP,
                    )
                )
                times.append(time.perf_counter() - t0)
                nod.NodeUnpublishVolume(
                    pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target))
                )
                nod.NodeUnstageVolume(
                    pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
                )
                ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
        raw = raw_tools_baseline(node.pool("bench").mountpoint, RUNS)
    finally:
        if server is not None:
            server.stop(1)
        for p in node.pools():
            node.destroy_pool(p.name)
        node.close()
        shutil.rmtree(base, ignore_errors=True)
    p50, p95 = statistics.median(times), pct(times, 0.95)
    print(
        f"csi provision (Create+Stage+Publish, 10 GiB xfs), {RUNS} runs: p50={p50:.3f}s p95={p95:.3f}s "
        f"min={min(times):.3f}s max={max(times):.3f}s"
    )
    print(
        f"raw tools (truncate+losetup+mkfs.xfs+mount+bind), {RUNS} runs: p50={statistics.median(raw):.3f}s "
        f"p95={pct(raw, 0.95):.3f}s"
    )
    print(f"driver overhead over raw tools at p50: {p50 - statistics.median(raw):+.3f}s")
    print(f"ratio={p50 / 1.0:.3f}")


if __name__ == "__main__":
    main()
