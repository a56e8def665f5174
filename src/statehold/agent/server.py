"""The agent process: the gRPC server on TCP (mutual TLS only), its replication loop, its
own fencing by the cluster record, and optionally a Prometheus endpoint.

There is no plaintext port: :meth:`AgentServer.start` binds one ``add_secure_port`` whose
credentials require a client certificate from the cluster CA, and the
:class:`~statehold.agent.auth.Authenticator` checks the caller's identity on every call.

With the cluster's records (``records``), :meth:`AgentServer.start` first compares this
node's primaries with them (``statehold.agent.fencing``) and only then serves; the
replication loop streams only from primaries the record confirmed, and a copy fenced while
it is still in use here is made read-only.

With ``local_socket``, the agent also serves its node's CSI plugin on a Unix socket of the
host (``statehold.agent.localsock``): only the coordination of group snapshots across
nodes, which the plugin cannot do itself (it holds no agent certificate).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from statehold.agent import pki
from statehold.agent.auth import Authenticator
from statehold.agent.book import Peer, ReplicaBook
from statehold.agent.client import AgentClient
from statehold.agent.copies import Copies
from statehold.agent.fencing import Fencing, GatedCopies, LocalCopies, Records, WatchfulCopies
from statehold.agent.gen import agent_pb2_grpc
from statehold.agent.limits import SERVER_OPTIONS
from statehold.agent.pause import Pauser
from statehold.agent.replicator import PeerAgent, Replicator
from statehold.agent.service import AgentServicer
from statehold.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("statehold.agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    """This node's name (its certificate's name)."""
    listen: str
    """``IP:PORT`` to serve on (port 0: any free port, see :attr:`AgentServer.port`)."""
    bundle: pki.Bundle
    """The CA certificate and this node's certificate and key."""
    home: Path
    """The Statehold home: this node's pools, and ``agent/replicas.json``."""
    interval: float = 5.0
    """Seconds between replication cycles; 0: no loop, streams only on ``Sync``."""
    checkpoint: int = 0
    """Seed bytes a replica applies between two durable progress records (0: the core's
    default)."""
    workers: int = 8
    """gRPC worker threads (each Replicate stream holds one for its duration)."""
    feed_frames: int = 8
    """Frames buffered between a stream and its writer (about 1 MiB each)."""
    metrics_listen: str = ""
    """``IP:PORT`` for Prometheus metrics; empty: none."""
    pause_dir: Path | None = None
    """Tests only: the directory of pause points (``statehold.agent.pause``)."""
    record_interval: float = 30.0
    """Seconds between two comparisons of this node's copies with the cluster records (5 s,
    or less, while a primary is held or the records cannot be read)."""
    record_wait: float = 10.0
    """Seconds the start waits for the first comparison before serving (primaries stay
    unreplicated until it is done, however long it takes)."""
    local_socket: Path | None = None
    """A Unix socket (0600, root) where this node's CSI plugin asks this agent to coordinate
    group snapshots across nodes (``statehold.agent.localsock``); None: not served."""


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"address {address!r} must be IP:PORT")
    return host.strip("[]"), int(port)


class AgentServer:
    """``records``: the cluster's ReplicatedVolume records (``fencing.kube_records``); None
    for a standalone agent, whose primaries replicate unchecked."""

    def __init__(self, config: AgentConfig, copies: Copies, *,
                 connect: Callable[[Peer], PeerAgent] | None = None,
                 records: Records | None = None) -> None:
        split_address(config.listen)
        self.config = config
        self.copies = copies
        self.book = ReplicaBook(config.home / "agent" / "replicas.json")
        self.pauser = Pauser(config.pause_dir)
        self._clients: dict[str, AgentClient] = {}
        self._clients_lock = threading.Lock()
        self.fencing = Fencing(config.node, copies if isinstance(copies, LocalCopies) else None,
                               records, interval=config.record_interval,
                               retry=min(5.0, config.record_interval))
        self.replicator = Replicator(GatedCopies(copies, self.fencing), self.book,
                                     connect or self._connect,
                                     interval=config.interval, pauser=self.pauser)
        self.servicer = AgentServicer(config.node, WatchfulCopies(copies, self.fencing), self.book,
                                      ca=config.bundle.ca,
                                      replicas=self.replicator.report, sync=self.replicator.sync_volume,
                                      feed_frames=config.feed_frames,
                                      workers=config.workers, pauser=self.pauser)
        self.port = 0
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._stopped = threading.Event()
        self._metrics: Any = None
        self._local: Any = None

    def own_address(self) -> str:
        """Where this agent is reached: its listening host and the port it bound."""
        host, _port = split_address(self.config.listen)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _connect(self, peer: Peer) -> AgentClient:
        """One channel per peer, reused across cycles (gRPC reconnects by itself). The
        peer's certificate must name the peer's node, whatever address it is dialled at."""
        key = f"{peer.node}@{peer.address}"
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = AgentClient(peer.address, self.config.bundle,
                                                          server_name=peer.node)
            return client

    def start(self, *, replicate: bool = True) -> None:
        cfg = self.config
        # before serving: this node's primaries against the record (fenced, confirmed or held)
        if not self.fencing.start(self._stop, wait=cfg.record_wait):
            log.warning("the first comparison with the cluster records is not done after %.0f s; "
                        "serving, with every primary held until it is", cfg.record_wait)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="agent"),
            interceptors=[Authenticator(cfg.bundle.ca)], options=SERVER_OPTIONS)
        agent_pb2_grpc.add_AgentServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        try:
            port = server.add_secure_port(cfg.listen, pki.server_credentials(cfg.bundle))
        except RuntimeError as exc:
            raise FailedPrecondition(f"cannot listen on {cfg.listen}: {exc}") from exc
        if not port:
            raise FailedPrecondition(f"cannot listen on {cfg.listen}")
        self.port = port
        server.start()
        self._server = server
        if cfg.local_socket is not None:
            from statehold.agent.localsock import LocalGroupsServicer, LocalSocket

            self._local = LocalSocket(cfg.local_socket, LocalGroupsServicer(
                cfg.node, cfg.bundle, self.own_address))
            self._local.start()
        if cfg.metrics_listen:
            from prometheus_client import start_http_server

            host, mport = split_address(cfg.metrics_listen)
            try:
                self._metrics, _thread = start_http_server(mport, host,
                                                           registry=self.replicator.metrics.registry)
            except OSError as exc:
                raise FailedPrecondition(f"cannot serve metrics on {cfg.metrics_listen}: {exc}") from exc
        if replicate and cfg.interval > 0:
            self._loop = threading.Thread(target=self.replicator.run, args=(self._stop,),
                                          name="replicator", daemon=True)
            self._loop.start()
        log.info("agent serving node=%s listen=%s port=%d", cfg.node, cfg.listen, port)

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self._local is not None:
            self._local.stop(grace)
            self._local = None
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._loop is not None:
            self._loop.join(grace + 30)
            self._loop = None
        self.fencing.join(grace + 30)
        self.servicer.close()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
