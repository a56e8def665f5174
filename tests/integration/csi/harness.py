"""A real CSI driver on a unix socket over a real engine pool, and a client for it.

Used by the integration and e2e CSI tests. The kubelet directory is a sibling of the engine
home (``<home>-kubelet``): the driver refuses node paths inside its own home. Teardown
releases any mount a failing test leaves under it (by exact path), and the engine fixture's
teardown any mount of a volume's loop device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node
from tests.fixtures.engine import release_home

NODE_ID = "node-a"
GiB = 1024**3
MiB = 1024**2


@dataclass
class Driver:
    """A running driver plus stubs; ``kubelet`` is the allowed root for node paths."""

    server: CsiServer
    channel: grpc.Channel
    identity: rpc.IdentityStub
    controller: rpc.ControllerStub
    node: rpc.NodeStub
    kubelet: Path
    socket: Path

    def staging(self, name: str) -> Path:
        path = self.kubelet / "plugins" / "staging" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def target(self, name: str) -> Path:
        parent = self.kubelet / "pods" / name
        parent.mkdir(parents=True, exist_ok=True)
        return parent / "mount"


@contextlib.contextmanager
def running_driver(node: Node, root: Path, *, mode: str = "all", shared: bool = False) -> Iterator[Driver]:
    kubelet = Path(f"{root}-kubelet")
    kubelet.mkdir(parents=True, exist_ok=True)
    sock = root / "csi" / "csi.sock"
    cfg = ServerConfig(
        endpoint=f"unix://{sock}",
        node_id=NODE_ID,
        mode=mode,  # type: ignore[arg-type]
        home=node.home,
        allowed_roots=(kubelet,),
        grace=2.0,
    )
    local = LocalBackend(cfg.backend_config(), node=node)
    server = CsiServer(cfg, local=local, with_shared=shared)
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield Driver(
            server=server,
            channel=channel,
            identity=rpc.IdentityStub(channel),
            controller=rpc.ControllerStub(channel),
            node=rpc.NodeStub(channel),
            kubelet=kubelet,
            socket=sock,
        )
    finally:
        channel.close()
        server.stop(0)
        release_home(kubelet)


def mount_cap(
    fs: str = "", mode: int = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = ()
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: int = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(), access_mode=pb.VolumeCapability.AccessMode(mode=mode)
    )


def code_of(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    """The status code of a call expected to fail (OK if it succeeded)."""
    try:
        call(request)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
