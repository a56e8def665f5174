"""The server's shutdown: in-flight calls finish within the grace period, new ones are
refused, the socket is removed. A real gRPC server on a unix socket; the backend is a
stand-in whose create blocks until released, so "in flight" is a fact, not a sleep."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

from statehold.csi.backend import SINGLE_NODE_MODES, VolumeInfo, VolumeRequest
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig

CAP = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(),
    access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)


class Blocking:
    kind = "local"
    access_modes = SINGLE_NODE_MODES
    supports_block = True
    needs_staging = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def create_volume(self, req: VolumeRequest) -> VolumeInfo:
        self.entered.set()
        assert self.release.wait(20)
        return VolumeInfo(volume_id=f"p/{req.name}", capacity_bytes=1 << 30, block=False)

    def list_volumes(self) -> Sequence[VolumeInfo]:
        return []


def test_stop_lets_in_flight_call_finish_then_refuses_and_removes_socket(tmp_path: Path) -> None:
    sock = tmp_path / "csi.sock"
    backend = Blocking()
    server = CsiServer(
        ServerConfig(endpoint=f"unix://{sock}", node_id="n1", home=tmp_path, grace=20),
        local=backend,  # type: ignore[arg-type]
        with_shared=False,
    )
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    stub = rpc.ControllerStub(channel)
    result: list[object] = []
    call = threading.Thread(
        target=lambda: result.append(
            stub.CreateVolume(pb.CreateVolumeRequest(name="v", volume_capabilities=[CAP]))
        )
    )
    call.start()
    assert backend.entered.wait(20)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert not server.wait(0)  # still draining: the call is in flight
    backend.release.set()
    call.join(20)
    stopper.join(20)
    assert server.wait(0)
    assert result and result[0].volume.volume_id == "p/v"  # type: ignore[attr-defined]
    assert not sock.exists()
    try:
        stub.ListVolumes(pb.ListVolumesRequest(), timeout=2)
        raise AssertionError("server still answering after stop")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
