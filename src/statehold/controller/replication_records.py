"""The cluster around replicated volumes: which PVs are replicated, the ReplicatedVolume
record each one gets, the Node and StoragePool facts decisions read, and node labels.

* A PV of our driver whose ``volumeAttributes`` say ``statehold.io/replicas`` > 1 (the CSI
  plugin writes them from the StorageClass parameters, with ``statehold.io/node``, the
  node that made the first copy) gets a ``ReplicatedVolume`` named after it
  (:func:`record_for_pv`, pure). The record's ``status.epoch``/``primary`` start at 1 and
  that node, written by compare-and-set in the reconciler.
* A record whose PV is gone is retired: its replicas are released, their labels removed,
  the record deleted (the primary copy is the CSI plugin's to delete with the PV).
* Node labels ``copy.statehold.io/<h16>=true`` admit a volume's copy holders (§8.2).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statehold.controller.locate import is_statehold_pv
from statehold.controller.replicas import Agents
from statehold.controller.replication_policy import PoolRoom
from statehold.engine.names import parse_size
from statehold.errors import InvalidArgument, NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME, STORAGE_POOL
from statehold.kube.nodes import NodeHealth, node_health
from statehold.replication.context import DEFAULT_RPO_SECONDS, NODE_KEY, REPLICAS_KEY, RPO_KEY
from statehold.replication.points import node_label

log = logging.getLogger("statehold.operator.replication")

MOVE_ON_CORDON = "statehold.io/move-on-cordon"
"""Annotation of a ReplicatedVolume: ``"false"`` keeps its primary where it is when its node
is cordoned or drained (the operator's ``--no-move-on-cordon`` does so for every volume)."""


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """What one reconcile pass reads once: Nodes and StoragePools."""

    health: Mapping[str, NodeHealth]
    labels: Mapping[str, Mapping[str, str]]
    pools: tuple[PoolRoom, ...]
    retiring: frozenset[tuple[str, str]]


def pool_room(obj: Obj) -> PoolRoom | None:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not spec.get("node"):
        return None
    free = status.get("allocatable")
    return PoolRoom(node=str(spec["node"]), pool=str(obj["metadata"]["name"]),
                    free=int(free) if isinstance(free, int) else 0,
                    ready=status.get("phase") == "Ready",
                    retiring=bool(spec.get("decommission")))


def read_facts(kube: Kube) -> ClusterFacts:
    nodes = kube.list(NODE)
    pools = tuple(p for p in (pool_room(o) for o in kube.list(STORAGE_POOL)) if p is not None)
    return ClusterFacts(
        health={n["metadata"]["name"]: node_health(n) for n in nodes},
        labels={n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes},
        pools=pools,
        retiring=frozenset((p.node, p.pool) for p in pools if p.retiring))


def _attrs(pv: Obj) -> dict[str, Any]:
    return dict(((pv.get("spec") or {}).get("csi") or {}).get("volumeAttributes") or {})


def replicas_of(pv: Obj) -> int:
    """Copies a PV asks for (1 when it is not ours or says nothing)."""
    if not is_statehold_pv(pv):
        return 1
    try:
        return max(1, int(_attrs(pv).get(REPLICAS_KEY, 1)))
    except (TypeError, ValueError):
        return 1


def moves_on_cordon(rv: Obj) -> bool:
    """Whether a cordon of the primary's node moves this volume (default yes)."""
    value = ((rv.get("metadata") or {}).get("annotations") or {}).get(MOVE_ON_CORDON, "true")
    return str(value).strip().lower() not in ("false", "no", "off", "0")


def first_primary(pv: Obj) -> str | None:
    """The node that made the volume's first copy (CreateVolume ran there)."""
    node = _attrs(pv).get(NODE_KEY)
    return str(node) if node else None


def record_for_pv(pv: Obj) -> Obj | None:
    """The ReplicatedVolume a PV should have (without status), or None when it has one copy."""
    replicas = replicas_of(pv)
    if replicas <= 1:
        return None
    spec = pv.get("spec") or {}
    attrs = _attrs(pv)
    try:
        rpo = int(attrs.get(RPO_KEY, DEFAULT_RPO_SECONDS))
        size = parse_size(str((spec.get("capacity") or {}).get("storage", "0")))
    except (InvalidArgument, ValueError):
        log.warning("event=bad_replicated_pv pv=%s attrs=%s", pv["metadata"]["name"], attrs)
        return None
    return {"apiVersion": REPLICATED_VOLUME.api_version, "kind": REPLICATED_VOLUME.kind,
            "metadata": {"name": pv["metadata"]["name"],
                         "labels": {"app.kubernetes.io/managed-by": "statehold"}},
            "spec": {"volumeHandle": str(spec["csi"]["volumeHandle"]), "replicas": replicas,
                     "rpoSeconds": max(1, rpo), "size": max(1, size)}}


def set_label(kube: Kube, node: str, volume: str, on: bool) -> None:
    """Add (``on``) or remove the copy label of ``volume`` on ``node``; a node gone is fine."""
    with contextlib.suppress(NotFound):
        kube.patch(NODE, node, {"metadata": {"labels": {node_label(volume): "true" if on else None}}})


def ensure_records(kube: Kube, agents: Agents, facts: ClusterFacts) -> list[Obj]:
    """One record per replicated PV (created when missing, size kept up to date after an
    expansion); records whose PV is gone retired. Returns the live records."""
    pvs = {pv["metadata"]["name"]: pv for pv in kube.list(PV)}
    live: list[Obj] = []
    records = {rv["metadata"]["name"]: rv for rv in kube.list(REPLICATED_VOLUME)}
    for name, pv in sorted(pvs.items()):
        want = record_for_pv(pv)
        if want is None:
            continue
        rv = records.get(name)
        if rv is None:
            rv = kube.create(want)
            log.info("event=record_created pv=%s volume=%s replicas=%d", name,
                     want["spec"]["volumeHandle"], want["spec"]["replicas"])
        elif rv["spec"].get("size") != want["spec"]["size"]:
            rv = kube.patch(REPLICATED_VOLUME, name, {"spec": {"size": want["spec"]["size"]}})
        live.append(rv)
    for name, rv in sorted(records.items()):
        if name not in pvs:
            retire_record(kube, agents, rv, facts)
    return live


def retire_record(kube: Kube, agents: Agents, rv: Obj, facts: ClusterFacts) -> None:
    """The PV is gone: release every replica, drop the labels, delete the record. The
    primary's engine volume went with the PV (CSI DeleteVolume); its label goes here."""
    volume = rv["spec"]["volumeHandle"]
    status = rv.get("status") or {}
    primary = status.get("primary")
    key = node_label(volume)
    holders = {c["node"] for c in status.get("copies") or []}
    holders |= {n for n, labels in facts.labels.items() if key in labels}
    for node in sorted(holders):
        if node != primary and node in facts.health:
            try:
                agents.release(node, volume)
            except NotFound:
                pass
            except StateholdError as exc:  # the node's agent is down: try again next pass
                log.warning("event=release_failed volume=%s node=%s error=%s", volume, node, exc)
                return
        set_label(kube, node, volume, False)
    with contextlib.suppress(NotFound):
        kube.delete(REPLICATED_VOLUME, rv["metadata"]["name"])
    log.info("event=record_retired volume=%s", volume)
