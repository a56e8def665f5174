"""ClusterView: the cluster state the extender reads, and an in-memory implementation.

Contract (both implementations, checked by ``tests/unit/scheduler/test_view_contract.py``):

* Lookups never raise for a missing object: they return None. Any other failure (API
  unreachable) raises a :mod:`statehold.errors` error, which the service turns into its
  fail-open (or fail-closed) answer.
* ``pools()`` maps a node name to the pools it reports; a node without any StoragePool
  status is absent (the filter then says "no capacity data").
* Values are snapshots: callers may keep them; they never change under the caller.
* Reads may be served from a cache a few seconds old. The reservation ledger, not the
  view, is what keeps a burst of pods from over-committing a pool.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from statehold.kube.nodes import NodeHealth
from statehold.scheduler.core import PoolState

DRIVER = "csi.statehold.io"


@dataclass(frozen=True, slots=True)
class ClaimInfo:
    """A PersistentVolumeClaim, reduced to what placement needs."""

    namespace: str
    name: str
    storage_class: str | None
    request: int
    volume_name: str | None = None
    """``spec.volumeName``: set once the claim is bound."""
    selected_node: str | None = None
    """``volume.kubernetes.io/selected-node``: the node the scheduler chose for a
    WaitForFirstConsumer claim; provisioning there is in flight."""


@dataclass(frozen=True, slots=True)
class StorageClassInfo:
    name: str
    provisioner: str
    wait_for_first_consumer: bool
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A PersistentVolume: its driver and the nodes that hold a copy of its data."""

    name: str
    driver: str | None
    handle: str | None = None
    nodes: frozenset[str] = frozenset()
    """Empty when the volume is not tied to nodes (a shared volume, or a replicated one)."""
    primary: str | None = None
    copy_label: str | None = None
    """A replicated volume: the node label its affinity requires (``copy.statehold.io/<h16>``);
    which nodes hold copies is then the ReplicatedVolume's word (:class:`ReplicaSetInfo`)."""


@dataclass(frozen=True, slots=True)
class CopyInfo:
    node: str
    role: str                 # primary | replica | seeding | stale | unknown
    point: str | None = None  # newest acknowledged point, e<epoch>-<seq>


@dataclass(frozen=True, slots=True)
class ReplicaSetInfo:
    """A ReplicatedVolume (named after its PV): the primary and every copy."""

    name: str
    primary: str
    epoch: int
    copies: tuple[CopyInfo, ...] = ()


class ClusterView(Protocol):
    def claim(self, namespace: str, name: str) -> ClaimInfo | None:
        """The claim, or None if it does not exist."""
        ...

    def claims(self, keys: Collection[tuple[str, str]]) -> Mapping[tuple[str, str], ClaimInfo]:
        """Many claims at once, by (namespace, name); missing ones are absent. The ledger
        checks every reserved claim each second: one call, not one lookup per claim."""
        ...

    def volume(self, name: str) -> VolumeInfo | None:
        """The PersistentVolume, or None."""
        ...

    def storage_class(self, name: str) -> StorageClassInfo | None:
        """The StorageClass, or None."""
        ...

    def pools(self) -> Mapping[str, tuple[PoolState, ...]]:
        """Node name → its pools (capacity, allocated, over-provisioning)."""
        ...

    def replica_set(self, name: str) -> ReplicaSetInfo | None:
        """The ReplicatedVolume of PV ``name`` (None: none, or not initialised yet)."""
        ...

    def node_health(self, name: str) -> NodeHealth | None:
        """The Node's health, or None when there is no such Node."""
        ...


class MemoryClusterView:
    """A ClusterView held in dictionaries: for tests, benchmarks and ``--cluster-file``.

    Thread-safe; the mutators stand in for what the API server and the agents would do
    (a claim gets bound, a pool reports new usage).
    """

    def __init__(self, *, claims: Iterable[ClaimInfo] = (), volumes: Iterable[VolumeInfo] = (),
                 classes: Iterable[StorageClassInfo] = (), pools: Iterable[PoolState] = (),
                 replica_sets: Iterable[ReplicaSetInfo] = (),
                 nodes: Iterable[NodeHealth] = ()) -> None:
        self._lock = threading.Lock()
        self._claims = {(c.namespace, c.name): c for c in claims}
        self._volumes = {v.name: v for v in volumes}
        self._classes = {s.name: s for s in classes}
        self._replica_sets = {r.name: r for r in replica_sets}
        self._nodes = {n.name: n for n in nodes}
        self._pools: dict[str, tuple[PoolState, ...]] = {}
        self._snapshot: Mapping[str, tuple[PoolState, ...]] = MappingProxyType({})
        for p in pools:
            self.put_pool(p)

    def claim(self, namespace: str, name: str) -> ClaimInfo | None:
        return self._claims.get((namespace, name))

    def claims(self, keys: Collection[tuple[str, str]]) -> Mapping[tuple[str, str], ClaimInfo]:
        return {k: self._claims[k] for k in keys if k in self._claims}

    def volume(self, name: str) -> VolumeInfo | None:
        return self._volumes.get(name)

    def storage_class(self, name: str) -> StorageClassInfo | None:
        return self._classes.get(name)

    def pools(self) -> Mapping[str, tuple[PoolState, ...]]:
        return self._snapshot

    def replica_set(self, name: str) -> ReplicaSetInfo | None:
        return self._replica_sets.get(name)

    def node_health(self, name: str) -> NodeHealth | None:
        return self._nodes.get(name)

    # -- mutators ------------------------------------------------------------------
    def put_claim(self, claim: ClaimInfo) -> None:
        with self._lock:
            self._claims[(claim.namespace, claim.name)] = claim

    def delete_claim(self, namespace: str, name: str) -> None:
        with self._lock:
            self._claims.pop((namespace, name), None)

    def put_volume(self, volume: VolumeInfo) -> None:
        with self._lock:
            self._volumes[volume.name] = volume

    def put_class(self, sc: StorageClassInfo) -> None:
        with self._lock:
            self._classes[sc.name] = sc

    def put_replica_set(self, rs: ReplicaSetInfo) -> None:
        with self._lock:
            self._replica_sets[rs.name] = rs

    def put_node(self, health: NodeHealth) -> None:
        with self._lock:
            self._nodes[health.name] = health

    def put_pool(self, pool: PoolState) -> None:
        with self._lock:
            others = tuple(p for p in self._pools.get(pool.node, ()) if p.name != pool.name)
            self._pools[pool.node] = tuple(sorted((*others, pool), key=lambda p: p.name))
            self._snapshot = MappingProxyType(dict(self._pools))
