"""The node agents as the controller calls them: the ``Agents`` port of
``statehold.controller.replicas``, implemented structurally over :class:`AgentClient`.

The operator process (``statehold operator run --role cluster``) builds one
:class:`AgentFleet` with its own client certificate (role ``controller``, issued by the
cluster CA) and a :class:`Directory` that answers from the cluster where each node's agent
listens (its Node's InternalIP and the agents' port, replication.md §8.4) and which node the
record names primary. This module imports neither the controller nor Kubernetes.

Names: the controller speaks of a volume by its CSI handle ``<pool>/<volume>``; a copy on
another node has the same engine name in a pool of that node, so each call first finds the
node's copy by name (``CopyStatus`` with ``any_pool``) and then addresses it there. Every
channel checks that the server's certificate names the node called (not just the address).

Errors are :mod:`statehold.errors`: ``NotFound`` only when the node's agent answered that
it holds no copy; a node without an address, or an agent that does not answer, is
``Unavailable`` (the reconciler must not mistake it for a missing copy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from statehold.agent import pki
from statehold.agent.book import Peer
from statehold.agent.client import AgentClient
from statehold.agent.copies import VolumeRef, VolumeSpec
from statehold.agent.gen import agent_pb2 as pb
from statehold.agent.groupcoordinator import Coordinator
from statehold.errors import FailedPrecondition, NotFound, StateholdError, Unavailable
from statehold.replication.cluster import CopyReport, CopyTarget

log = logging.getLogger("statehold.agent.fleet")


class Directory(Protocol):
    """What the fleet asks the cluster (``statehold.controller.agent_directory``)."""

    def address(self, node: str) -> str:
        """``IP:PORT`` of the node's agent; NotFound when the cluster knows none."""
        ...

    def primary(self, volume: str) -> str | None:
        """The node the volume's record names primary (None: no record or no primary)."""
        ...


class AgentFleet:
    """The controller's ``Agents`` port over gRPC (see the module docstring). Thread-safe:
    the kopf handler and the ticker call it side by side."""

    def __init__(self, bundle: pki.Bundle, directory: Directory, *, timeout: float = 15.0) -> None:
        self.directory = directory
        self.timeout = timeout
        self._bundle = bundle
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[str, AgentClient]] = {}
        # per (volume, replica): the point a primary reported as acknowledged and when the
        # primary took it (a replica only knows when it committed it)
        self._acks: dict[tuple[str, str], tuple[str, float]] = {}

    # -- channels ------------------------------------------------------------------------
    def renew(self, bundle: pki.Bundle) -> None:
        """Use a new client certificate from now on (the old channels are closed)."""
        with self._lock:
            self._bundle = bundle
            old, self._clients = self._clients, {}
        for _address, client in old.values():
            client.close()

    def close(self) -> None:
        self.renew(self._bundle)

    def client(self, node: str) -> AgentClient:
        """The channel to ``node``'s agent (shared; do not close it)."""
        return self._client(node)

    def group_coordinator(self, **options: Any) -> Coordinator:
        """A coordinator of group snapshots across nodes over this fleet's channels
        (``options``: :class:`~statehold.agent.groupcoordinator.Coordinator`'s)."""
        return Coordinator(self._client, **options)

    def _client(self, node: str) -> AgentClient:
        try:
            address = self.directory.address(node)
        except StateholdError as exc:
            raise Unavailable(f"the agent of node {node} has no known address: {exc}") from exc
        with self._lock:
            known = self._clients.get(node)
            if known is not None and known[0] == address:
                return known[1]
            client = AgentClient(address, self._bundle, timeout=self.timeout, server_name=node)
            self._clients[node] = (address, client)
        if known is not None:
            known[1].close()  # the node's address changed
        return client

    def _find(self, node: str, volume: str) -> tuple[AgentClient, VolumeRef, pb.CopyStatusReply]:
        """The node's copy of ``volume`` (by engine name, in whichever of its pools)."""
        client = self._client(node)
        reply = client.copy_status(VolumeRef.parse(volume), any_pool=True)
        return client, VolumeRef.parse(reply.volume), reply

    # -- the Agents port -----------------------------------------------------------------
    def copy_state(self, node: str, volume: str) -> CopyReport:
        _client, ref, r = self._find(node, volume)
        if r.role == "primary":
            with self._lock:
                for rep in r.replicas:
                    if rep.point and rep.acknowledged_at > 0:
                        self._acks[(volume, rep.node)] = (rep.point, rep.acknowledged_at)
        point = r.point or None
        taken = r.point_time or None
        if r.role != "primary" and point is not None:
            with self._lock:
                known = self._acks.get((volume, node))
            if known is not None and known[0] == point:
                taken = known[1]  # the primary's time of the point: the lag is its age
        return CopyReport(node=node, pool=ref.pool, role=r.role, epoch=r.epoch, point=point,
                          point_time=taken, resume_offset=r.resume_offset)

    def create_copy(self, node: str, volume: str, *, pool: str, size: int) -> None:
        """An empty copy made like the primary's engine volume (mode, filesystem; the
        larger of the sizes): the primary is the one the record names."""
        primary = self.directory.primary(volume)
        if not primary:
            raise FailedPrecondition(f"the record of {volume} names no primary yet")
        _client, _ref, src = self._find(primary, volume)
        if not src.mode:
            raise FailedPrecondition(f"the primary's agent on {primary} did not say what {volume} is")
        spec = VolumeSpec(max(size, src.size), src.mode, src.fs)
        self._client(node).create_copy(VolumeRef(pool, VolumeRef.parse(volume).name), spec)

    def set_replicas(self, primary: str, volume: str, replicas: Sequence[CopyTarget], *,
                     rpo_seconds: int = 0) -> None:
        client, ref, _r = self._find(primary, volume)
        peers = []
        for target in replicas:
            try:
                peers.append(Peer(target.node, self.directory.address(target.node), target.pool))
            except StateholdError as exc:  # listed again at the next pass
                log.warning("event=replica_without_address volume=%s node=%s error=%s", volume,
                            target.node, exc)
        client.set_replicas(ref, peers, rpo_seconds=rpo_seconds)

    def promote(self, node: str, volume: str, epoch: int) -> None:
        client, ref, _r = self._find(node, volume)
        client.promote(ref, epoch)

    def demote(self, node: str, volume: str, epoch: int) -> None:
        client, ref, _r = self._find(node, volume)
        client.demote(ref, epoch)

    def final_sync(self, primary: str, volume: str, to: str) -> str:
        client, ref, _r = self._find(primary, volume)
        # no deadline: a final sync moves what changed since the last cycle; a dead peer
        # or a cut link is noticed by keepalive
        reports = client.sync(ref, to=to)
        target = next((r for r in reports if r.node == to), None)
        if target is None or not target.point:  # the agent checked it; be sure anyway
            raise FailedPrecondition(f"the final sync of {volume} reached no copy on {to}")
        return str(target.point)

    def release(self, node: str, volume: str) -> None:
        try:
            client, ref, _r = self._find(node, volume)
        except NotFound:
            return  # already gone
        client.release(ref)
        with self._lock:
            self._acks.pop((volume, node), None)

    def delete_copy(self, node: str, volume: str) -> None:
        try:
            client, ref, _r = self._find(node, volume)
        except NotFound:
            return  # already gone (CSI DeleteVolume, or an earlier pass)
        client.release(ref, whole=True)
        with self._lock:
            for key in [k for k in self._acks if k[0] == volume]:
                self._acks.pop(key, None)

    def export_pool(self, node: str, pool: str) -> None:
        self._client(node).export_pool(pool)
