"""The agent's node-local socket: the node's CSI plugin asks its own node's agent to
coordinate a group snapshot across nodes (docs/design/group-snapshots.md, "Who
coordinates"; docs/security.md, "The agent's local socket").

Why: the coordinator talks to every involved node's agent over their mutual TLS, which
needs a node certificate, and the CSI plugin's account may not read the agents' certificate
Secrets (nor should it). The agent of the same node already holds that node's certificate,
so it coordinates, and the plugin only asks it, over a Unix socket on the host.

What is served there, and to whom:

* only the ``LocalGroups`` service (``agent.proto``): CoordinateGroupSnapshot,
  ReadGroupSnapshot, DeleteGroupSnapshot; no Agent call (Promote, Sync, Replicate...) is
  reachable on the socket;
* the socket is created 0600 in a directory made 0700, both owned by root: only root on
  this host connects (the CSI plugin's and the agent's containers are privileged and mount
  the same host directory). Root on the host could read the agent's key anyway, so the
  socket gives nobody a right they did not have;
* every call must involve this node: a group whose parts (or node list) do not name it is
  PERMISSION_DENIED here, before any agent is called, and the other agents check the same
  of the node certificate the calls arrive with. The local caller can therefore do exactly
  what this node may do as a group's coordinator, and nothing else.

The caller gives each other node's agent address (it reads the Nodes, as the operator does:
the agents' account cannot list Nodes); a wrong address reaches nobody, because the TLS
handshake checks that the server's certificate names the node called. This node's own agent
is dialled at its own listening address, whatever the caller says.

The client side (:class:`LocalGroupsClient`) is what ``statehold csi --agent-socket`` hands
to the GroupController: it meets :class:`statehold.csi.remote_groups.GroupsAcrossNodes`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from statehold.agent import pki
from statehold.agent.fleet import AgentFleet
from statehold.agent.gen import agent_pb2 as pb
from statehold.agent.gen import agent_pb2_grpc
from statehold.agent.groupcoordinator import (
    ABORT_TIMEOUT,
    COMMIT_GRACE,
    PART_TIMEOUT,
    PREPARE_TIMEOUT,
)
from statehold.agent.service import answer
from statehold.engine.groups import Member
from statehold.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    StateholdError,
    Unavailable,
)
from statehold.grpcerrors import error_from

log = logging.getLogger("statehold.agent.local")

SOCKET_NAME = "agent.sock"
"""The socket's file name in the shared directory (the chart's ``agent.localSocketDir``)."""


# -- the server (in the agent) ---------------------------------------------------------------
class _Addresses:
    """A fleet directory answering from one request's addresses."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self.addresses = dict(addresses)

    def address(self, node: str) -> str:
        found = self.addresses.get(node)
        if not found:
            raise Unavailable(f"no address was given for the agent of node {node}")
        return found

    def primary(self, volume: str) -> str | None:
        return None


def _members(members: Sequence[Member]) -> list[pb.GroupMember]:
    return [pb.GroupMember(pool=m.pool, volume=m.volume, snapshot=m.snapshot) for m in members]


class LocalGroupsServicer(agent_pb2_grpc.LocalGroupsServicer):
    """The coordinator for this node's CSI plugin. ``own_address``: where this node's agent
    listens (called per request: the port is known only once the server is bound)."""

    def __init__(self, node: str, bundle: pki.Bundle, own_address: Callable[[], str], *,
                 timeout: float = 30.0) -> None:
        self.node = node
        self.bundle = bundle
        self.own_address = own_address
        self.timeout = timeout

    @contextlib.contextmanager
    def _fleet(self, addresses: Mapping[str, str]) -> Iterator[AgentFleet]:
        known = {**addresses, self.node: self.own_address()}
        fleet = AgentFleet(self.bundle, _Addresses(known), timeout=self.timeout)
        try:
            yield fleet
        finally:
            fleet.close()

    def _involved(self, nodes: Sequence[str], name: str) -> None:
        if not name:
            raise InvalidArgument("a group snapshot needs a name")
        if len(set(nodes)) != len(nodes) or not all(nodes):
            raise InvalidArgument(f"group {name!r}: every node once, by name ({list(nodes)})")
        if self.node not in nodes:
            raise PermissionDenied(f"the agent of {self.node} coordinates only groups this node "
                                   f"takes part in; {name!r} involves {', '.join(nodes)}")

    @answer
    def CoordinateGroupSnapshot(self, request: pb.CoordinateGroupRequest,
                                context: grpc.ServicerContext) -> pb.CoordinatedGroup:
        nodes = [p.node for p in request.parts]
        self._involved(nodes, request.name)
        parts = {p.node: [Member(m.pool, m.volume, m.snapshot) for m in p.members]
                 for p in request.parts}
        log.info("local: coordinating group=%s nodes=%s lease=%.1f", request.name,
                 ",".join(sorted(nodes)), request.lease_seconds)
        with self._fleet({p.node: p.address for p in request.parts}) as fleet:
            taken = fleet.group_coordinator().create(request.name, parts, request.lease_seconds)
        return pb.CoordinatedGroup(
            name=taken.name, attempt=taken.attempt, created_at=taken.created_at,
            existed=taken.existed, windows=dict(taken.windows),
            parts=[pb.NodeMembers(node=n, members=_members(m)) for n, m in taken.members.items()])

    def _parts(self, request: pb.LocalGroupRequest, *, delete: bool) -> pb.LocalGroupParts:
        nodes = [n.node for n in request.nodes]
        self._involved(nodes, request.name)
        with self._fleet({n.node: n.address for n in request.nodes}) as fleet:
            coordinator = fleet.group_coordinator()
            if delete:
                log.info("local: deleting group=%s nodes=%s", request.name, ",".join(nodes))
                coordinator.delete(request.name, nodes)
                return pb.LocalGroupParts()
            found = coordinator.parts(request.name, nodes)
        return pb.LocalGroupParts(parts=[pb.NodeGroupPart(node=n, part=found[n]) for n in nodes])

    @answer
    def ReadGroupSnapshot(self, request: pb.LocalGroupRequest,
                          context: grpc.ServicerContext) -> pb.LocalGroupParts:
        return self._parts(request, delete=False)

    @answer
    def DeleteGroupSnapshot(self, request: pb.LocalGroupRequest,
                            context: grpc.ServicerContext) -> pb.LocalGroupParts:
        return self._parts(request, delete=True)


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody listens on; refuse a live one or a non-socket."""
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
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another process is serving on {path}")


class LocalSocket:
    """The gRPC server of :class:`LocalGroupsServicer` on ``path`` (see the module doc)."""

    def __init__(self, path: Path, servicer: LocalGroupsServicer, *, workers: int = 4) -> None:
        if not path.is_absolute():
            raise InvalidArgument(f"the local socket {path} must be an absolute path")
        self.path = path
        self.servicer = servicer
        self.workers = workers
        self._server: grpc.Server | None = None

    def start(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # a hostPath DirectoryOrCreate is born 0755
        _clear_stale(self.path)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers,
                                                        thread_name_prefix="agent-local"))
        agent_pb2_grpc.add_LocalGroupsServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, server)
        old = os.umask(0o177)  # born 0600: no moment where others may connect
        try:
            if not server.add_insecure_port(f"unix://{self.path}"):
                raise FailedPrecondition(f"cannot listen on {self.path}")
            server.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server = server
        log.info("local socket serving path=%s", self.path)

    def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()


# -- the client (in the CSI plugin) ----------------------------------------------------------
class Directory(Protocol):
    def address(self, node: str) -> str:
        """``IP:PORT`` of the node's agent (``controller.agent_directory.KubeDirectory``)."""
        ...


@dataclass(frozen=True, slots=True)
class Coordinated:
    """A group across nodes as the local agent took it (meets ``remote_groups.TakenGroup``)."""

    name: str
    attempt: str
    created_at: float
    members: Mapping[str, tuple[Member, ...]]
    windows: Mapping[str, float]
    existed: bool


class LocalGroupsClient:
    """The CSI plugin's ``GroupsAcrossNodes``: its own node's agent over ``socket``. The
    other nodes' agent addresses come from ``directory`` and travel with each request."""

    def __init__(self, socket_path: Path, node: str, directory: Directory) -> None:
        self.path = socket_path
        self.node = node
        self.directory = directory
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stub: Any = agent_pb2_grpc.LocalGroupsStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def _address(self, node: str) -> str:
        if node == self.node:
            return ""  # the agent dials itself at its own address
        try:
            return self.directory.address(node)
        except StateholdError as exc:
            raise Unavailable(f"the agent of node {node} has no known address: {exc}") from exc

    def _call(self, name: str, request: Any, timeout: float) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            error = error_from(exc, f"{name} through the node agent's socket {self.path}")
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not self.path.exists():
                raise Unavailable(f"the node agent's local socket {self.path} is not there: is "
                                  f"the statehold-agent pod running on node {self.node}? "
                                  "(groups across nodes are coordinated by it)") from exc
            raise error from exc

    def create(self, name: str, parts: Mapping[str, Sequence[Member]], lease: float) -> Coordinated:
        request = pb.CoordinateGroupRequest(name=name, lease_seconds=lease, parts=[
            pb.NodeMembers(node=n, address=self._address(n), members=_members(m))
            for n, m in parts.items()])
        # the coordinator's own deadlines, one after the other, and a margin
        deadline = PART_TIMEOUT + PREPARE_TIMEOUT + lease + COMMIT_GRACE + ABORT_TIMEOUT + 30
        reply: pb.CoordinatedGroup = self._call("CoordinateGroupSnapshot", request, deadline)
        return Coordinated(
            name=reply.name, attempt=reply.attempt, created_at=reply.created_at,
            members={p.node: tuple(Member(m.pool, m.volume, m.snapshot) for m in p.members)
                     for p in reply.parts},
            windows=dict(reply.windows), existed=reply.existed)

    def _request(self, name: str, nodes: Sequence[str]) -> pb.LocalGroupRequest:
        return pb.LocalGroupRequest(name=name, nodes=[
            pb.NodeAgent(node=n, address=self._address(n)) for n in nodes])

    def parts(self, name: str, nodes: Sequence[str]) -> dict[str, pb.GroupPartReply]:
        reply: pb.LocalGroupParts = self._call("ReadGroupSnapshot", self._request(name, nodes),
                                               PART_TIMEOUT + 15)
        return {p.node: p.part for p in reply.parts}

    def delete(self, name: str, nodes: Sequence[str]) -> None:
        self._call("DeleteGroupSnapshot", self._request(name, nodes), PART_TIMEOUT + 15)
