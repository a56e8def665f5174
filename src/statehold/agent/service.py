"""The agent's gRPC servicer: translate, call the replication core, encode. No logic here.

Every method is wrapped by :func:`answer`, the agent's one place where errors become
status codes (through ``statehold.grpcerrors``, the mapping the CSI driver uses too).

``Replicate`` hands frames to a worker thread through a bounded :class:`Feed`: the gRPC
thread only reads the stream, the worker decodes and writes, and a full feed stops the
reads so a slow disk backpressures the sender. A stream that ends without its end frame,
is cancelled or loses its connection aborts the feed: the core sees its frames iterator
raise and keeps the copy's previous point. One stream per volume at a time; a second is
refused ABORTED.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import grpc

from statehold import __version__
from statehold.agent import auth
from statehold.agent.book import Peer, ReplicaBook
from statehold.agent.copies import Applied, Copies, CopyView, VolumeRef, VolumeSpec
from statehold.agent.feed import Feed
from statehold.agent.gen import agent_pb2 as pb
from statehold.agent.gen import agent_pb2_grpc
from statehold.agent.groupfreeze import Caller, GroupFreezes, Phase
from statehold.agent.pause import NO_PAUSE, Pauser
from statehold.agent.pools import EnginePools, PoolExports
from statehold.agent.replicator import ReplicaReport
from statehold.engine.groups import Member
from statehold.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable
from statehold.grpcerrors import status_of

log = logging.getLogger("statehold.agent")

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


Method = Callable[[S, Req, grpc.ServicerContext], Resp]


def answer(fn: Method[S, Req, Resp]) -> Method[S, Req, Resp]:
    """Run a servicer method; a raised error becomes its status code (and a log line)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
        started = time.monotonic()
        try:
            return fn(self, request, context)
        except Exception as exc:
            code, message = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("rpc=%s internal error", name)
        finally:
            log.debug("rpc=%s ms=%.1f", name, (time.monotonic() - started) * 1000)
        log.info("rpc=%s code=%s error=%r", name, code.name, message)
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper


class Streams:
    """One Replicate stream per volume at a time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: set[VolumeRef] = set()

    def claim(self, volume: VolumeRef) -> None:
        with self._guard:
            if volume in self._busy:
                raise Aborted(f"a replication stream into {volume} is already in progress")
            self._busy.add(volume)

    def release(self, volume: VolumeRef) -> None:
        with self._guard:
            self._busy.discard(volume)


def _copy_reply(volume: VolumeRef, view: CopyView, replicas: list[ReplicaReport],
                versions: tuple[int, ...], spec: VolumeSpec | None = None) -> pb.CopyStatusReply:
    reply = pb.CopyStatusReply(
        volume=str(volume), role=view.role, epoch=view.epoch, point=view.point,
        resume_offset=view.resume_offset, state=view.state, wire_versions=versions,
        replicas=[_replica(r) for r in replicas], point_time=view.point_time)
    if spec is not None:
        reply.size, reply.mode, reply.fs = spec.size, spec.mode, spec.fs
    return reply


def _replica(r: ReplicaReport) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(node=r.node, address=r.address, pool=r.pool, point=r.point,
                            acknowledged_at=r.acknowledged_at, lag_seconds=r.lag_seconds,
                            sent_bytes=r.sent_bytes, last_error=r.last_error)


def engine_pools(copies: object) -> PoolExports | None:
    """The pools behind ``copies`` when they are the engine's, through the wrappers that
    expose what they wrap as ``inner`` (``agent.fencing``); None for a copies port without
    pools (ExportPool is then refused)."""
    from statehold.agent.engine_copies import EngineCopies

    for _ in range(8):
        if isinstance(copies, EngineCopies):
            return EnginePools(copies.node)
        copies = getattr(copies, "inner", None)
    return None


def engine_groups(copies: object, node: str, pauser: Pauser) -> GroupFreezes | None:
    """This node's group-snapshot attempts over the engine behind ``copies`` (as
    :func:`engine_pools`); None without one (the group calls are then refused)."""
    from statehold.agent.engine_copies import EngineCopies

    for _ in range(8):
        if isinstance(copies, EngineCopies):
            return GroupFreezes(copies.node, node, pauser=pauser)
        copies = getattr(copies, "inner", None)
    return None


def _phase(p: Phase) -> pb.GroupPhaseReply:
    return pb.GroupPhaseReply(id=p.id, state=p.state, reason=p.reason, frozen=p.frozen,
                              lease_left=p.lease_left, window_seconds=p.window)


def _members(members: Sequence[Member]) -> list[pb.GroupMember]:
    return [pb.GroupMember(pool=m.pool, volume=m.volume, snapshot=m.snapshot) for m in members]


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: str, copies: Copies, book: ReplicaBook, *, ca: bytes,
                 replicas: Callable[[VolumeRef], list[ReplicaReport]] = lambda _v: [],
                 sync: Callable[[VolumeRef], list[ReplicaReport]] = lambda _v: [],
                 feed_frames: int = 8, workers: int = 4, pauser: Pauser = NO_PAUSE,
                 pools: PoolExports | None = None, groups: GroupFreezes | None = None) -> None:
        self.node = node
        self.copies = copies
        self.pools = pools if pools is not None else engine_pools(copies)
        self.book = book
        self.ca = ca
        self.replicas = replicas
        self.sync = sync
        self.feed_frames = feed_frames
        self.pauser = pauser
        self.streams = Streams()
        self.appliers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply")
        self.groups = groups if groups is not None else engine_groups(copies, node, pauser)

    def close(self) -> None:
        self.appliers.shutdown(wait=False, cancel_futures=True)
        if self.groups is not None:
            self.groups.close()

    def _group_port(self, context: grpc.ServicerContext) -> tuple[GroupFreezes, Caller]:
        if self.groups is None:
            raise FailedPrecondition(f"the agent on {self.node} does not take group snapshots")
        who = auth.caller(context, self.ca)
        return self.groups, Caller(who.name, who.role)

    @answer
    def PrepareGroupSnapshot(self, request: pb.PrepareGroupRequest,
                             context: grpc.ServicerContext) -> pb.GroupPhaseReply:
        port, who = self._group_port(context)
        members = [Member(m.pool, m.volume, m.snapshot) for m in request.members]
        return _phase(port.prepare(who, request.id, request.name, members, list(request.nodes),
                                   request.lease_seconds))

    @answer
    def CommitGroupSnapshot(self, request: pb.GroupDecision,
                            context: grpc.ServicerContext) -> pb.GroupPhaseReply:
        port, who = self._group_port(context)
        return _phase(port.commit(who, request.id, request.name, request.instant))

    @answer
    def AbortGroupSnapshot(self, request: pb.GroupDecision,
                           context: grpc.ServicerContext) -> pb.GroupPhaseReply:
        port, who = self._group_port(context)
        return _phase(port.abort(who, request.id, request.name))

    @answer
    def GroupSnapshotPart(self, request: pb.GroupPartRequest,
                          context: grpc.ServicerContext) -> pb.GroupPartReply:
        port, who = self._group_port(context)
        part = port.part(who, request.name, delete=request.delete)
        return pb.GroupPartReply(name=part.name, found=part.found, attempt=part.attempt,
                                 members=_members(part.members), missing=_members(part.missing),
                                 created_at=part.created_at, nodes=list(part.nodes))

    @answer
    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingReply:
        who = auth.caller(context, self.ca)
        return pb.PingReply(node=self.node, version=__version__, caller=f"{who.role}/{who.name}",
                            wire_versions=self.copies.wire_versions)

    @answer
    def CopyStatus(self, request: pb.CopyStatusRequest, context: grpc.ServicerContext) -> pb.CopyStatusReply:
        volume = VolumeRef.parse(request.volume)
        if request.any_pool:
            volume = self.copies.locate(volume)
        view = self.copies.state(volume)
        return _copy_reply(volume, view, self.replicas(volume), self.copies.wire_versions,
                           self.copies.spec(volume))

    @answer
    def CreateCopy(self, request: pb.CreateCopyRequest, context: grpc.ServicerContext) -> pb.CopyStatusReply:
        volume = VolumeRef.parse(request.volume)
        if request.mode not in ("filesystem", "block") or request.size <= 0:
            raise InvalidArgument("a copy needs a size and a mode (filesystem or block)")
        view = self.copies.create(volume, VolumeSpec(request.size, request.mode, request.fs))
        return _copy_reply(volume, view, [], self.copies.wire_versions)

    @answer
    def Sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> pb.SyncReply:
        volume = VolumeRef.parse(request.volume)
        if request.to and self.copies.in_use(volume):
            # a planned move's final point must hold every write: not while a workload may
            # still write (the record's `moving` keeps the volume from being staged again)
            raise Aborted(f"{volume} is still attached or mounted on {self.node}; the final "
                          "sync waits until it is unstaged")
        reports = self.sync(volume)
        if request.to:
            target = next((r for r in reports if r.node == request.to), None)
            if target is None:
                raise FailedPrecondition(f"{request.to} is not a replica of {volume} on {self.node}")
            if target.last_error or not target.point:
                raise FailedPrecondition(f"final sync of {volume} to {request.to} failed: "
                                         f"{target.last_error or 'no point acknowledged'}")
        return pb.SyncReply(replicas=[_replica(r) for r in reports])

    @answer
    def Promote(self, request: pb.RoleRequest, context: grpc.ServicerContext) -> pb.RoleReply:
        volume = VolumeRef.parse(request.volume)
        view = self.copies.promote(volume, request.epoch)
        return pb.RoleReply(volume=str(volume), role=view.role, epoch=view.epoch)

    @answer
    def Demote(self, request: pb.RoleRequest, context: grpc.ServicerContext) -> pb.RoleReply:
        volume = VolumeRef.parse(request.volume)
        view = self.copies.demote(volume, request.epoch)
        return pb.RoleReply(volume=str(volume), role=view.role, epoch=view.epoch)

    @answer
    def SetReplicas(self, request: pb.SetReplicasRequest,
                    context: grpc.ServicerContext) -> pb.SetReplicasReply:
        volume = VolumeRef.parse(request.volume)
        peers = tuple(Peer(p.node, p.address, p.pool) for p in request.replicas)
        if any(not p.node or not p.address for p in peers):
            raise InvalidArgument("every replica needs a node and an address")
        if any(p.node == self.node for p in peers):
            raise InvalidArgument(f"{self.node} cannot be a replica of its own volume")
        self.book.set(volume, peers, rpo_seconds=request.rpo_seconds)
        return pb.SetReplicasReply()

    @answer
    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseReply:
        volume = VolumeRef.parse(request.volume)
        self.copies.release(volume, whole=request.whole)
        self.book.set(volume, ())  # a released copy streams to nobody
        return pb.ReleaseReply()

    @answer
    def ExportPool(self, request: pb.ExportPoolRequest,
                   context: grpc.ServicerContext) -> pb.ExportPoolReply:
        if not request.pool or "/" in request.pool:
            raise InvalidArgument(f"pool {request.pool!r} must be a pool name")
        if self.pools is None:
            raise FailedPrecondition(f"the agent on {self.node} does not manage pools")
        exported = self.pools.export(request.pool)
        log.info("pool export pool=%s exported=%s", request.pool, exported)
        return pb.ExportPoolReply(pool=request.pool, exported=exported)

    @answer
    def Replicate(self, request_iterator: Iterator[pb.Frame], context: grpc.ServicerContext) -> pb.Ack:
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument("an empty replication stream")
        volume = VolumeRef.parse(first.volume)
        self.streams.claim(volume)
        try:
            applied = self._apply(volume, first, request_iterator, context)
        finally:
            self.streams.release(volume)
        return pb.Ack(volume=str(volume), point=applied.point, epoch=applied.epoch, bytes=applied.bytes)

    def _apply(self, volume: VolumeRef, first: pb.Frame, rest: Iterator[pb.Frame],
               context: grpc.ServicerContext) -> Applied:
        feed = Feed(self.feed_frames, on_frame=lambda i: self.pauser.point(f"apply.{i}"))
        result: Future[Applied] = self.appliers.submit(self.copies.apply, volume, feed.frames())

        def alive() -> bool:
            return bool(context.is_active()) and not result.done()

        try:
            if feed.put(first.data, alive=alive):
                for message in rest:
                    if not feed.put(message.data, alive=alive):
                        break
        except Exception as exc:  # grpc.RpcError: the call was cancelled or its connection lost
            feed.abort(f"stream into {volume} cut after {feed.received} frames: {type(exc).__name__}")
            log.warning("replication stream cut volume=%s frames=%d", volume, feed.received)
            result.exception()  # let the core finish unwinding before the volume is released
            raise Unavailable(f"stream into {volume} cut after {feed.received} frames") from exc
        if not context.is_active():
            feed.abort(f"stream into {volume} cancelled after {feed.received} frames")
        else:
            feed.close()
        return result.result()  # the core's own error (Corrupt, fenced epoch...) if it failed
