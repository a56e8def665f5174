"""A client of another node's agent (mutual TLS), speaking in the agent's own types.

gRPC errors never leave this module: a failed call raises the Statehold error its code
stands for (``statehold.grpcerrors.error_from``), with the peer's address in the message.
Keepalive pings notice a dead peer or a cut link within seconds even in the middle of a
stream (both ends are configured for it in ``statehold.agent.limits``).

With ``server_name`` (a node name) the TLS handshake checks the server's certificate
against that name (its DNS SAN) rather than the address dialled: the peer must be *that*
node's agent, whatever address it was found at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from statehold.agent import pki
from statehold.agent.book import Peer
from statehold.agent.copies import Applied, CopyView, VolumeRef, VolumeSpec
from statehold.agent.gen import agent_pb2 as pb
from statehold.agent.gen import agent_pb2_grpc
from statehold.agent.limits import CLIENT_OPTIONS
from statehold.engine.groups import Member
from statehold.errors import NotFound
from statehold.grpcerrors import error_from


def _view(r: pb.CopyStatusReply) -> CopyView:
    return CopyView(role=r.role, epoch=r.epoch, point=r.point, resume_offset=r.resume_offset,
                    state=r.state)


class AgentClient:
    def __init__(self, address: str, bundle: pki.Bundle, *, timeout: float = 30.0,
                 server_name: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        options: list[tuple[str, int | str]] = [*CLIENT_OPTIONS]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = grpc.secure_channel(address, pki.channel_credentials(bundle),
                                            options=options)
        self._stub: Any = agent_pb2_grpc.AgentStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout or self.timeout,
                                             wait_for_ready=False)
        except grpc.RpcError as exc:
            raise error_from(exc, f"{name} on {self.address}") from exc

    def ping(self) -> pb.PingReply:
        reply: pb.PingReply = self._call("Ping", pb.PingRequest())
        return reply

    def copy_status(self, volume: VolumeRef, *, any_pool: bool = False) -> pb.CopyStatusReply:
        """The copy's state; ``any_pool``: wherever this node holds the volume's name (the
        reply's ``volume`` says which pool)."""
        reply: pb.CopyStatusReply = self._call(
            "CopyStatus", pb.CopyStatusRequest(volume=str(volume), any_pool=any_pool))
        return reply

    def state(self, volume: VolumeRef) -> tuple[CopyView | None, tuple[int, ...]]:
        """The peer's copy of ``volume`` (None: it has none) and the replication wire
        versions the peer speaks."""
        try:
            r = self.copy_status(volume)
        except NotFound:
            return None, tuple(self.ping().wire_versions)
        return _view(r), tuple(r.wire_versions)

    def create_copy(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView:
        r = self._call("CreateCopy", pb.CreateCopyRequest(volume=str(volume), size=spec.size,
                                                          mode=spec.mode, fs=spec.fs))
        return _view(r)

    def replicate(self, volume: VolumeRef, frames: Iterator[bytes], *,
                  timeout: float | None = None) -> Applied:
        """Stream encoded frames to the peer; returns once it acknowledged the new point.
        ``timeout`` (default: none) bounds the whole stream; a dead peer is noticed by
        keepalive either way."""

        def messages() -> Iterator[pb.Frame]:
            first = True
            for data in frames:
                yield pb.Frame(volume=str(volume), data=data) if first else pb.Frame(data=data)
                first = False

        try:
            ack = self._stub.Replicate(messages(), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from(exc, f"Replicate on {self.address}") from exc
        return Applied(point=ack.point, epoch=ack.epoch, bytes=ack.bytes)

    def sync(self, volume: VolumeRef, *, to: str = "",
             timeout: float | None = None) -> list[pb.ReplicaStatus]:
        """Replicate ``volume`` to each replica now (no deadline unless ``timeout``).
        ``to``: a planned move's final sync (Aborted while the volume is in use there,
        FailedPrecondition unless ``to`` acknowledged the new point)."""
        try:
            reply = self._stub.Sync(pb.SyncRequest(volume=str(volume), to=to), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from(exc, f"Sync on {self.address}") from exc
        return list(reply.replicas)

    def promote(self, volume: VolumeRef, epoch: int) -> pb.RoleReply:
        reply: pb.RoleReply = self._call("Promote", pb.RoleRequest(volume=str(volume), epoch=epoch))
        return reply

    def demote(self, volume: VolumeRef, epoch: int) -> pb.RoleReply:
        reply: pb.RoleReply = self._call("Demote", pb.RoleRequest(volume=str(volume), epoch=epoch))
        return reply

    def set_replicas(self, volume: VolumeRef, replicas: list[Peer], *, rpo_seconds: int = 0) -> None:
        """The replicas the primary streams to, and the volume's RPO (0: not said)."""
        peers = [pb.Peer(node=p.node, address=p.address, pool=p.pool) for p in replicas]
        self._call("SetReplicas", pb.SetReplicasRequest(volume=str(volume), replicas=peers,
                                                        rpo_seconds=rpo_seconds))

    def release(self, volume: VolumeRef, *, whole: bool = False) -> None:
        """Delete the peer's copy (a copy already gone is fine); ``whole``: even a primary
        (the volume itself is deleted)."""
        self._call("Release", pb.ReleaseRequest(volume=str(volume), whole=whole))

    def export_pool(self, pool: str) -> bool:
        """Export the peer's retired ``pool``: True once done, False when it had none (an
        earlier export)."""
        reply: pb.ExportPoolReply = self._call("ExportPool", pb.ExportPoolRequest(pool=pool))
        return bool(reply.exported)

    # -- group snapshots across nodes (docs/design/group-snapshots.md) ---------------------
    def prepare_group(self, attempt: str, name: str, members: Sequence[Member],
                      nodes: Sequence[str], lease: float, *, timeout: float) -> pb.GroupPhaseReply:
        """Phase 1 on this node: READY (frozen under ``lease``), or the node's error."""
        request = pb.PrepareGroupRequest(
            id=attempt, name=name, nodes=list(nodes), lease_seconds=lease,
            members=[pb.GroupMember(pool=m.pool, volume=m.volume, snapshot=m.snapshot)
                     for m in members])
        reply: pb.GroupPhaseReply = self._call("PrepareGroupSnapshot", request, timeout)
        return reply

    def commit_group(self, attempt: str, name: str, instant: float, *,
                     timeout: float) -> pb.GroupPhaseReply:
        reply: pb.GroupPhaseReply = self._call(
            "CommitGroupSnapshot", pb.GroupDecision(id=attempt, name=name, instant=instant), timeout)
        return reply

    def abort_group(self, attempt: str, name: str, *, timeout: float) -> pb.GroupPhaseReply:
        reply: pb.GroupPhaseReply = self._call(
            "AbortGroupSnapshot", pb.GroupDecision(id=attempt, name=name), timeout)
        return reply

    def group_part(self, name: str, *, delete: bool = False,
                   timeout: float | None = None) -> pb.GroupPartReply:
        """This node's part of a committed group (``found`` false: none); ``delete``: delete it."""
        reply: pb.GroupPartReply = self._call(
            "GroupSnapshotPart", pb.GroupPartRequest(name=name, delete=delete), timeout)
        return reply
