"""The CSI gRPC server on a unix socket: which services run, socket hygiene, shutdown.

``mode`` picks the services: ``controller`` (Identity + Controller + GroupController),
``node`` (Identity + Node) or ``all`` (all four on one socket, for a single host). The socket is created
0600 (only root — kubelet and the sidecars — may talk to a driver that mounts things),
a stale socket left by a crash is removed, a live one is never stolen.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from statehold.csi.backend import BackendConfig, VolumeBackend
from statehold.csi.controller import ControllerServicer
from statehold.csi.gen import csi_pb2_grpc
from statehold.csi.groupcontroller import GroupControllerServicer
from statehold.csi.identity import IdentityServicer, missing_tools
from statehold.csi.local_groups import LocalGroups
from statehold.csi.metrics import CsiMetrics
from statehold.csi.node import DEFAULT_MAX_VOLUMES, NodeServicer
from statehold.csi.remote_groups import GroupsAcrossNodes, PoolNodes
from statehold.csi.replicated import Replicas
from statehold.csi.router import Router, load_shared
from statehold.csi.status import VolumeLocks
from statehold.csi.trimmer import DEFAULT_INTERVAL as DEFAULT_TRIM_INTERVAL
from statehold.csi.trimmer import Trimmer
from statehold.errors import FailedPrecondition, InvalidArgument
from statehold.kube.facade import Kube

log = logging.getLogger("statehold.csi")

Mode = Literal["controller", "node", "all"]
MODES: tuple[Mode, ...] = ("controller", "node", "all")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    endpoint: str                           # unix:///path/csi.sock
    node_id: str
    mode: Mode = "all"
    home: Path = Path(".statehold")
    allowed_roots: tuple[Path, ...] = (Path("/var/lib/kubelet"),)
    max_volumes: int = DEFAULT_MAX_VOLUMES
    workers: int = 8
    grace: float = 10.0                     # seconds in-flight calls get on shutdown
    trim_interval: float = DEFAULT_TRIM_INTERVAL  # node modes: seconds between trim rounds

    def backend_config(self) -> BackendConfig:
        return BackendConfig(
            home=self.home, node_id=self.node_id, allowed_roots=self.allowed_roots,
            expand_on_node=self.mode == "controller",
        )


def socket_path(endpoint: str) -> Path:
    """``unix:///abs/path`` (or ``unix:/abs/path``) -> the path. Other schemes are refused:
    a CSI driver that mounts filesystems must not listen on the network."""
    if not endpoint.startswith("unix:"):
        raise InvalidArgument(f"endpoint {endpoint!r} must be unix:///absolute/path")
    raw = endpoint[len("unix:"):]
    if raw.startswith("//"):
        raw = raw[2:]
    if not raw.startswith("/"):
        raise InvalidArgument(f"endpoint {endpoint!r} must name an absolute socket path")
    return Path(raw)


def clear_stale_socket(path: Path) -> None:
    """Remove a socket nobody listens on; refuse to touch a live one or a non-socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise FailedPrecondition(f"cannot probe {path}: {exc}") from exc
        path.unlink(missing_ok=True)
        log.info("removed stale socket path=%s", path)
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another process is serving on {path}")


class CsiServer:
    """Build, start and stop the gRPC server. ``local`` may be injected (tests, bench).
    ``kube``: the cluster's API, where NodeStage reads a replicated volume's record
    (``csi.replicated``); None (standalone) reads nothing. ``across`` and ``pool_nodes``:
    the GroupController's ports for groups whose members live on several nodes
    (``csi.remote_groups``; the CLI gives this node's agent over its local socket); without
    them such a group is FAILED_PRECONDITION."""

    def __init__(self, config: ServerConfig, local: VolumeBackend | None = None,
                 shared: VolumeBackend | None = None, *, with_shared: bool = True,
                 kube: Kube | None = None, across: GroupsAcrossNodes | None = None,
                 pool_nodes: PoolNodes | None = None) -> None:
        if config.mode not in MODES:
            raise InvalidArgument(f"mode {config.mode!r} is not one of {list(MODES)}")
        self.config = config
        self.path = socket_path(config.endpoint)
        from statehold.csi.backend_local import LocalBackend

        if local is None:
            local = LocalBackend(config.backend_config())
        if shared is None and with_shared:
            shared = load_shared(config.backend_config())
        self.router = Router(local, shared)
        self.groups = (LocalGroups(local.node, config.node_id, remote=across,
                                   pool_nodes=pool_nodes)
                       if isinstance(local, LocalBackend) else None)
        self.replicas = (Replicas(local.node, config.node_id, kube)
                         if isinstance(local, LocalBackend) else None)
        self.locks = VolumeLocks()
        # trimSchedule of the node's volumes (docs/csi.md, "Trim"): node modes only
        self.trimmer = (Trimmer(local.node, self.locks, interval=config.trim_interval)
                        if isinstance(local, LocalBackend) and config.mode in ("node", "all")
                        else None)
        self.metrics = CsiMetrics()  # every call counted by method and code (docs/metrics.md)
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        cfg = self.config
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="csi"),
                             interceptors=[self.metrics.interceptor()])
        controller = cfg.mode in ("controller", "all")
        add = csi_pb2_grpc  # generated, untyped
        identity = IdentityServicer(health=missing_tools)
        add.add_IdentityServicer_to_server(identity, server)  # type: ignore[no-untyped-call]
        if controller:
            add.add_ControllerServicer_to_server(  # type: ignore[no-untyped-call]
                ControllerServicer(self.router, self.locks, self.replicas), server
            )
            add.add_GroupControllerServicer_to_server(  # type: ignore[no-untyped-call]
                GroupControllerServicer(self.groups, self.locks), server
            )
        if cfg.mode in ("node", "all"):
            node = NodeServicer(
                self.router, self.locks, node_id=cfg.node_id,
                allowed_roots=cfg.allowed_roots, max_volumes=cfg.max_volumes,
                replicas=self.replicas,
            )
            add.add_NodeServicer_to_server(node, server)  # type: ignore[no-untyped-call]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_socket(self.path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            server.add_insecure_port(f"unix://{self.path}")
            server.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server = server
        if self.trimmer is not None:
            self.trimmer.start()
        log.info("csi serving endpoint=%s mode=%s node=%s", cfg.endpoint, cfg.mode, cfg.node_id)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish for ``grace`` s, remove the socket."""
        if self.trimmer is not None:
            self.trimmer.stop()
        if self._server is not None:
            self._server.stop(self.config.grace if grace is None else grace).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
