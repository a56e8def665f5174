"""A pool exported while the node's other Statehold processes hold it, with real processes
(docs/design/pool-metadata.md, "Export"): ``statehold agent serve`` (on 127.0.0.1, mutual
TLS) and ``statehold csi`` (the node plugin, on its socket) on one engine home both open its
pools at start and keep them open; the export (the agent's ExportPool, or ``statehold pool
export``) marks the pool, both let go of it by themselves, and it is unmounted, its image
detached and kept, while both go on answering: the plugin NotFound for the exported pool's
volumes, the agent NotFound for its copies. ``statehold pool import`` brings the pool back
to both. A process that never lets go is named, and the retry finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.engine.hostregistry import EXPORTING
from statehold.engine.node import Node
from statehold.engine.types import GiB, MiB, PoolSpec
from tests.fixtures.engine import release_home
from tests.fixtures.netns import wait_for

pytestmark = [pytest.mark.root]

STATEHOLD = str(Path(sys.executable).parent / "statehold")
C = grpc.StatusCode
POOL = "retired"
OTHER = "kept"
NODE = "n1"


@dataclass
class NodeProcs:
    """The node's processes on one home, and how to ask them."""

    home: Path
    kubelet: Path
    work: Path
    csi: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]
    address: str
    channel: grpc.Channel
    images: dict[str, Path] = field(default_factory=dict)

    @property
    def controller(self) -> rpc.ControllerStub:
        return rpc.ControllerStub(self.channel)

    def mountpoint(self, pool: str = POOL) -> Path:
        return self.home / "pools" / pool

    def logs(self) -> str:
        return "".join(f"\n--- {name} log:\n{(self.work / f'{name}.log').read_text()[-4000:]}"
                       for name in ("csi", "agent"))

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STATEHOLD, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def agent_cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``statehold agent <argv>`` with the controller's certificate (ExportPool is the
        controller's call only)."""
        return self.run("agent", *argv, "--address", self.address,
                        "--certs", str(self.work / "controller-certs"))

    def alive(self) -> bool:
        return self.csi.poll() is None and self.agent.poll() is None


def holds(pid: int, root: Path) -> list[str]:
    """What process ``pid`` holds under ``root``: open files, cwd, mapped files (read from
    /proc here, independently of the engine's own scan)."""
    prefix = str(root) + "/"
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(prefix):
                found.append(target)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if prefix in line:
                found.append(line.split()[-1])
    return found


def volume_request(name: str, pool: str) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[pb.VolumeCapability(
            block=pb.VolumeCapability.BlockVolume(),
            access_mode=pb.VolumeCapability.AccessMode(
                mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))],
        parameters={"pool": pool})


def code(call: Any, request: Any) -> grpc.StatusCode:
    try:
        call(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code()
    return C.OK


def listed(procs: NodeProcs) -> list[str]:
    reply = procs.controller.ListVolumes(pb.ListVolumesRequest(), timeout=60)
    return sorted(e.volume.volume_id for e in reply.entries)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"STATEHOLD_LOG_LEVEL": "INFO"})


def _agent_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    def port() -> int | None:
        assert proc.poll() is None, f"the agent exited: {log.read_text()[-4000:]}"
        found = re.search(r"serving \S+ port=(\d+)", log.read_text())
        return int(found.group(1)) if found else None

    return int(wait_for(port, 60, "the agent serving"))


def _serving(channel: grpc.Channel, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, f"the node plugin exited: {log.read_text()[-4000:]}"
    try:
        rpc.IdentityStub(channel).Probe(pb.ProbeRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return True


@pytest.fixture
def procs(scratch: Path) -> Iterator[NodeProcs]:
    home, kubelet, work = scratch / "home", scratch / "kubelet", scratch / "work"
    for d in (home, kubelet, work):
        d.mkdir()
    started: list[subprocess.Popen[bytes]] = []
    channel: grpc.Channel | None = None
    try:
        maker = Node(home, watch_interval=0)
        try:
            images = {p: Path(maker.create_pool(PoolSpec(name=p, image_size=GiB)).sources[0])
                      for p in (POOL, OTHER)}
        finally:
            maker.close()
        for argv in (["--out", str(work / "certs"), "--node", NODE, "--ip", "127.0.0.1"],
                     ["--out", str(work / "controller-certs"), "--node", "operator",
                      "--role", "controller"]):
            subprocess.run([STATEHOLD, "agent", "certs", "--ca-dir", str(work / "ca"), *argv],
                           check=True, capture_output=True, timeout=60)
        sock = work / "csi.sock"
        csi = _spawn([STATEHOLD, "csi", "--endpoint", f"unix://{sock}", "--node-id", NODE,
                      "--mode", "all", "--home", str(home), "--allowed-root", str(kubelet),
                      "--grace", "2"], work / "csi.log")
        started.append(csi)
        agent = _spawn([STATEHOLD, "agent", "serve", "--listen", "127.0.0.1:0", "--certs",
                        str(work / "certs"), "--home", str(home), "--node-name", NODE,
                        "--interval", "0", "--standalone", "--grace", "0"], work / "agent.log")
        started.append(agent)
        port = _agent_port(work / "agent.log", agent)
        channel = grpc.insecure_channel(f"unix://{sock}")
        ch = channel
        wait_for(lambda: _serving(ch, csi, work / "csi.log"), 60, "the node plugin serving")
        yield NodeProcs(home, kubelet, work, csi, agent, f"127.0.0.1:{port}", channel, images)
    finally:
        if channel is not None:
            channel.close()
        for proc in started:  # ours, by pid
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        release_home(kubelet)
        release_home(home)


def both_hold(procs: NodeProcs, pool: str = POOL) -> bool:
    return all(holds(p.pid, procs.mountpoint(pool)) for p in (procs.csi, procs.agent))


def assert_exported(procs: NodeProcs) -> None:
    mountpoint, image = procs.mountpoint(), procs.images[POOL]
    assert not os.path.ismount(mountpoint)
    losetup = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                             check=True, timeout=30)
    assert losetup.stdout.strip() == ""          # its image detached...
    assert image.stat().st_size == GiB           # ...and kept: an export is not a delete
    assert procs.alive(), procs.logs()


def test_the_agent_exports_a_pool_its_node_plugin_and_itself_hold_open(procs: NodeProcs) -> None:
    made = procs.controller.CreateVolume(volume_request("pv-gone", POOL), timeout=60).volume
    assert made.volume_id in listed(procs)
    procs.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=made.volume_id), timeout=60)
    wait_for(lambda: both_hold(procs), 30, "the pool open in both processes")
    kept = procs.controller.CreateVolume(volume_request("pv-kept", OTHER), timeout=60).volume

    done = procs.agent_cli("export-pool", POOL)
    assert done.returncode == 0, done.stderr + procs.logs()
    assert json.loads(done.stdout) == {"pool": POOL, "exported": True}
    assert_exported(procs)
    assert not both_hold(procs) and holds(procs.csi.pid, procs.mountpoint(OTHER))
    assert listed(procs) == [kept.volume_id]     # the plugin answers, the other pool served
    assert code(procs.controller.CreateVolume, volume_request("pv-new", POOL)) == C.INVALID_ARGUMENT
    again = procs.agent_cli("export-pool", POOL)  # the agent answers: nothing left to export
    assert again.returncode == 0 and json.loads(again.stdout)["exported"] is False

    back = procs.run("pool", "import", str(procs.images[POOL]), "--home", str(procs.home))
    assert back.returncode == 0, back.stderr
    new = procs.controller.CreateVolume(volume_request("pv-new", POOL), timeout=60).volume
    assert sorted([kept.volume_id, new.volume_id]) == listed(procs)
    refused = procs.agent_cli("export-pool", POOL)  # the agent has it again, and it is not empty
    assert refused.returncode == 5 and "pv-new" in refused.stderr
    assert procs.alive(), procs.logs()


def test_an_exported_pools_volumes_answer_not_found_until_it_is_imported(procs: NodeProcs) -> None:
    vol = procs.controller.CreateVolume(volume_request("pv-data", POOL), timeout=60).volume
    expand = pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=128 * MiB))
    wait_for(lambda: both_hold(procs), 30, "the pool open in both processes")
    served = procs.agent_cli("status", vol.volume_id).returncode

    done = procs.run("pool", "export", POOL, "--home", str(procs.home))  # the engine's call
    assert done.returncode == 0, done.stderr + procs.logs()
    assert_exported(procs)
    assert code(procs.controller.ControllerExpandVolume, expand) == C.NOT_FOUND
    assert listed(procs) == []
    status = procs.agent_cli("status", vol.volume_id)
    assert status.returncode == 3 != served, status.stderr  # NotFound, and still serving

    back = procs.run("pool", "import", str(procs.images[POOL]), "--home", str(procs.home))
    assert back.returncode == 0, back.stderr
    assert listed(procs) == [vol.volume_id]
    assert code(procs.controller.ControllerExpandVolume, expand) == C.OK
    assert procs.agent_cli("status", vol.volume_id).returncode == served  # the agent follows
    assert procs.alive(), procs.logs()


def test_a_process_that_never_lets_go_is_named_and_the_retry_finishes(procs: NodeProcs) -> None:
    vol = procs.controller.CreateVolume(volume_request("pv-held", POOL), timeout=60).volume
    expand = pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=128 * MiB))
    mountpoint = procs.mountpoint()
    holder = subprocess.Popen(["sleep", "600"], cwd=mountpoint / "volumes")
    try:
        failed = procs.run("pool", "export", POOL, "--home", str(procs.home), "--wait", "3")
        assert failed.returncode == 7, failed.stderr  # Temporary
        assert f"pid {holder.pid} (sleep)" in failed.stderr
        for let_go in (procs.csi, procs.agent):
            assert f"pid {let_go.pid} (" not in failed.stderr
        assert os.path.ismount(mountpoint)
        registry = json.loads((procs.home / "node.json").read_text())
        assert EXPORTING in registry["pools"][POOL]  # the mark stays
        assert not both_hold(procs)  # they let go all the same
        assert code(procs.controller.ControllerExpandVolume, expand) == C.FAILED_PRECONDITION
    finally:
        holder.kill()
        holder.wait(10)
    done = procs.run("pool", "export", POOL, "--home", str(procs.home))
    assert done.returncode == 0, done.stderr
    assert_exported(procs)
    assert code(procs.controller.ControllerExpandVolume, expand) == C.NOT_FOUND
