"""A ClusterView over the Kube facade (:mod:`statehold.kube.facade`).

Claims, PersistentVolumes, ReplicatedVolumes and Nodes are read live on each lookup: whether
a claim is bound, and which node the scheduler selected, is what the ledger follows, and
which copy is primary and whether its node is up is what failover moves, so they must be
fresh.
StoragePools and StorageClasses change rarely and are listed at most every
``cache_seconds`` (a 1,000-node cluster would otherwise cost a list per request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from statehold.errors import NotFound
from statehold.kube.facade import Kube
from statehold.kube.kinds import NODE, PV, PVC, REPLICATED_VOLUME, STORAGE_CLASS, STORAGE_POOL
from statehold.kube.nodes import NodeHealth, node_health
from statehold.scheduler.core import PoolState
from statehold.scheduler.objects import (
    claim_info,
    pools_by_node,
    replica_set_info,
    storage_class_info,
    volume_info,
)
from statehold.scheduler.view import ClaimInfo, ReplicaSetInfo, StorageClassInfo, VolumeInfo

BULK_THRESHOLD = 8
"""Up to this many claims are read with GETs; more with a LIST per namespace."""


class KubeClusterView:
    def __init__(self, kube: Kube, *, cache_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: tuple[float, Mapping[str, tuple[PoolState, ...]]] | None = None
        self._classes: tuple[float, Mapping[str, StorageClassInfo]] | None = None

    def _get(self, kind: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.kube.get(kind, name, namespace)
        except NotFound:
            return None

    def claim(self, namespace: str, name: str) -> ClaimInfo | None:
        obj = self._get(PVC, name, namespace)
        return claim_info(obj) if obj is not None else None

    def claims(self, keys: Collection[tuple[str, str]]) -> Mapping[tuple[str, str], ClaimInfo]:
        """A few claims are fetched one by one; more, with one list per namespace."""
        if len(keys) <= BULK_THRESHOLD:
            found = ((k, self.claim(*k)) for k in keys)
            return {k: c for k, c in found if c is not None}
        wanted = set(keys)
        out: dict[tuple[str, str], ClaimInfo] = {}
        for ns in sorted({ns for ns, _ in wanted}):
            for obj in self.kube.list(PVC, ns):
                info = claim_info(obj)
                if (info.namespace, info.name) in wanted:
                    out[(info.namespace, info.name)] = info
        return out

    def volume(self, name: str) -> VolumeInfo | None:
        obj = self._get(PV, name)
        return volume_info(obj) if obj is not None else None

    def storage_class(self, name: str) -> StorageClassInfo | None:
        now = self._clock()
        with self._lock:
            cached = self._classes
        if cached is None or now - cached[0] >= self.cache_seconds:
            infos = (storage_class_info(o) for o in self.kube.list(STORAGE_CLASS))
            cached = (now, MappingProxyType({s.name: s for s in infos}))
            with self._lock:
                self._classes = cached
        return cached[1].get(name)

    def replica_set(self, name: str) -> ReplicaSetInfo | None:
        obj = self._get(REPLICATED_VOLUME, name)
        return replica_set_info(obj) if obj is not None else None

    def node_health(self, name: str) -> NodeHealth | None:
        obj = self._get(NODE, name)
        return node_health(obj) if obj is not None else None

    def pools(self) -> Mapping[str, tuple[PoolState, ...]]:
        now = self._clock()
        with self._lock:
            cached = self._pools
        if cached is None or now - cached[0] >= self.cache_seconds:
            cached = (now, MappingProxyType(pools_by_node(self.kube.list(STORAGE_POOL))))
            with self._lock:
                self._pools = cached
        return cached[1]
