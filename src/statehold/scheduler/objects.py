"""Kubernetes objects (plain JSON dicts) → the ClusterView's values. Pure functions.

Field facts used:

* PVC: ``spec.storageClassName`` (or the old ``volume.beta.kubernetes.io/storage-class``
  annotation), ``spec.resources.requests.storage``, ``spec.volumeName``, and the
  ``volume.kubernetes.io/selected-node`` annotation kube-scheduler writes when it binds a
  pod with a WaitForFirstConsumer claim.
* PV: ``spec.csi.driver`` / ``volumeHandle``, and the nodes holding a copy from
  ``spec.nodeAffinity.required.nodeSelectorTerms[].matchExpressions[]`` with operator
  ``In`` on a topology key. The primary copy's node is the ``statehold.io/primary-node``
  annotation (or the same key in ``spec.csi.volumeAttributes``); a single-copy volume's
  only node is its primary.
* A replicated PV's affinity requires its copy label instead (``copy.statehold.io/<h16>``,
  ``Exists``, or ``In ["true"]`` as external-provisioner writes it from the accessible
  topology); its ReplicatedVolume (statehold.io/v1alpha1, named after the PV) gives
  ``status.primary``, ``status.epoch`` and ``status.copies[] {node, role, point}``.
* Node: health (Ready, out-of-service taint) from :func:`statehold.kube.nodes.node_health`.
* StorageClass: ``provisioner``, ``volumeBindingMode``, ``parameters``.
* StoragePool (statehold.io/v1alpha1): ``spec.node``, ``spec.overprovisionRatio``
  (default 10), ``status.capacity`` and ``status.provisioned`` (sum of volume sizes, what
  the thin limit counts; ``status.allocated`` when absent); ``status.allocatable: 0``
  (the agent's word that the disks are physically full) makes the pool full. A pool
  without a status capacity, or in phase Failed, has no capacity data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from statehold.errors import InvalidArgument
from statehold.kube.nodes import node_health
from statehold.scheduler.core import PoolState
from statehold.scheduler.quantity import parse_quantity
from statehold.scheduler.view import (
    ClaimInfo,
    CopyInfo,
    MemoryClusterView,
    ReplicaSetInfo,
    StorageClassInfo,
    VolumeInfo,
)

log = logging.getLogger(__name__)

TOPOLOGY_KEYS = ("topology.statehold.io/node", "kubernetes.io/hostname")
COPY_LABEL_PREFIX = "copy.statehold.io/"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PRIMARY_NODE = "statehold.io/primary-node"
BETA_CLASS = "volume.beta.kubernetes.io/storage-class"
DEFAULT_OVERPROVISION = 10.0


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def claim_info(obj: Mapping[str, Any]) -> ClaimInfo:
    annotations = _dig(obj, "metadata", "annotations") or {}
    sc = _dig(obj, "spec", "storageClassName")
    if sc is None:
        sc = annotations.get(BETA_CLASS)
    raw = _dig(obj, "spec", "resources", "requests", "storage")
    try:
        request = parse_quantity(raw) if raw is not None else 0
    except InvalidArgument:
        log.warning("event=bad_request_size claim=%s/%s value=%r",
                    _dig(obj, "metadata", "namespace"), _dig(obj, "metadata", "name"), raw)
        request = 0
    return ClaimInfo(
        namespace=_dig(obj, "metadata", "namespace") or "default",
        name=_dig(obj, "metadata", "name") or "",
        storage_class=sc or None,
        request=request,
        volume_name=_dig(obj, "spec", "volumeName") or None,
        selected_node=annotations.get(SELECTED_NODE) or None,
    )


def _copy_label(expr: Mapping[str, Any]) -> str | None:
    key = expr.get("key")
    if not isinstance(key, str) or not key.startswith(COPY_LABEL_PREFIX):
        return None
    op, values = expr.get("operator"), expr.get("values") or []
    return key if op == "Exists" or (op == "In" and "true" in values) else None


def volume_info(obj: Mapping[str, Any]) -> VolumeInfo:
    nodes: set[str] = set()
    copy_label = None
    terms = _dig(obj, "spec", "nodeAffinity", "required", "nodeSelectorTerms") or []
    for term in terms:
        for expr in (term or {}).get("matchExpressions") or []:
            if expr.get("key") in TOPOLOGY_KEYS and expr.get("operator") == "In":
                nodes.update(v for v in expr.get("values") or [] if isinstance(v, str))
            copy_label = copy_label or _copy_label(expr)
    attributes = _dig(obj, "spec", "csi", "volumeAttributes") or {}
    annotations = _dig(obj, "metadata", "annotations") or {}
    primary = annotations.get(PRIMARY_NODE) or attributes.get(PRIMARY_NODE)
    if primary is None and len(nodes) == 1:
        primary = next(iter(nodes))
    return VolumeInfo(
        name=_dig(obj, "metadata", "name") or "",
        driver=_dig(obj, "spec", "csi", "driver"),
        handle=_dig(obj, "spec", "csi", "volumeHandle"),
        nodes=frozenset(nodes),
        primary=primary,
        copy_label=copy_label,
    )


def replica_set_info(obj: Mapping[str, Any]) -> ReplicaSetInfo | None:
    """A ReplicatedVolume's primary and copies; None until the operator recorded an epoch."""
    status = obj.get("status") or {}
    primary, epoch = status.get("primary"), status.get("epoch")
    if not isinstance(primary, str) or not primary or not isinstance(epoch, int):
        return None
    copies = tuple(CopyInfo(str(c["node"]), str(c.get("role", "unknown")), c.get("point"))
                   for c in status.get("copies") or [] if isinstance(c, Mapping) and c.get("node"))
    return ReplicaSetInfo(name=_dig(obj, "metadata", "name") or "", primary=primary,
                          epoch=epoch, copies=copies)


def storage_class_info(obj: Mapping[str, Any]) -> StorageClassInfo:
    params = obj.get("parameters") or {}
    return StorageClassInfo(
        name=_dig(obj, "metadata", "name") or "",
        provisioner=obj.get("provisioner") or "",
        wait_for_first_consumer=obj.get("volumeBindingMode") == "WaitForFirstConsumer",
        parameters={str(k): str(v) for k, v in params.items()},
    )


def pool_state(obj: Mapping[str, Any]) -> PoolState | None:
    """The pool's capacity, or None when it reports none yet."""
    node = _dig(obj, "spec", "node")
    status = obj.get("status") or {}
    if not node or status.get("capacity") is None or status.get("phase") == "Failed":
        return None
    used = status.get("provisioned")
    if used is None:
        used = status.get("allocated", 0)
    ratio = _dig(obj, "spec", "overprovisionRatio")
    try:
        pool = PoolState(node=node, name=_dig(obj, "metadata", "name") or "",
                         capacity=parse_quantity(status["capacity"]),
                         allocated=parse_quantity(used),
                         overprovision=float(ratio) if ratio is not None else DEFAULT_OVERPROVISION)
    except (InvalidArgument, TypeError, ValueError):
        log.warning("event=bad_pool_status pool=%s", _dig(obj, "metadata", "name"))
        return None
    if status.get("allocatable") == 0 and pool.free() > 0:
        # The agent reports no room although the thin limit is not reached: the disks are
        # physically full. Count the pool as fully promised.
        pool = replace(pool, allocated=pool.limit)
    return pool


def pools_by_node(objs: Iterable[Mapping[str, Any]]) -> dict[str, tuple[PoolState, ...]]:
    out: dict[str, list[PoolState]] = {}
    for o in objs:
        p = pool_state(o)
        if p is not None:
            out.setdefault(p.node, []).append(p)
    return {n: tuple(sorted(ps, key=lambda p: p.name)) for n, ps in out.items()}


def memory_view(objs: Iterable[Mapping[str, Any]]) -> MemoryClusterView:
    """A MemoryClusterView holding these objects (PVCs, PVs, StorageClasses, StoragePools,
    ReplicatedVolumes, Nodes; anything else is ignored): the ``--cluster-file`` of the CLI,
    and tests."""
    claims, volumes, classes, pools, sets, nodes = [], [], [], [], [], []
    for o in objs:
        kind = o.get("kind")
        if kind == "PersistentVolumeClaim":
            claims.append(claim_info(o))
        elif kind == "PersistentVolume":
            volumes.append(volume_info(o))
        elif kind == "StorageClass":
            classes.append(storage_class_info(o))
        elif kind == "StoragePool":
            p = pool_state(o)
            if p is not None:
                pools.append(p)
        elif kind == "ReplicatedVolume":
            rs = replica_set_info(o)
            if rs is not None:
                sets.append(rs)
        elif kind == "Node":
            nodes.append(node_health(o))
    return MemoryClusterView(claims=claims, volumes=volumes, classes=classes, pools=pools,
                             replica_sets=sets, nodes=nodes)
