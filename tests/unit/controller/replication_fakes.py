"""A fake of the node agents (the controller's ``Agents`` port) holding each node's copy of
each volume with the replication core's role rules, and builders of a small cluster
(Nodes, StoragePools, a replicated PV) in MemoryKube. Every call, and every compare-and-set
of a ReplicatedVolume status, goes into one ordered log, so tests assert on order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from statehold.controller.replicas import CopyReport, CopyTarget
from statehold.errors import Aborted, FailedPrecondition, Fenced, NotFound, Unavailable
from statehold.kube.facade import Obj
from statehold.kube.kinds import NODE, STORAGE_POOL
from statehold.kube.memory import MemoryKube

GiB = 1 << 30
HANDLE = "p1/pvc-1"


@dataclass
class FakeCopy:
    pool: str
    role: str = "seeding"
    epoch: int = 0
    point: str | None = None
    seq: int = 0
    point_time: float | None = None
    blank: bool = False   # the copy CreateVolume made: no replication state yet


@dataclass
class FakeAgents:
    log: list[tuple[Any, ...]] = field(default_factory=list)
    copies: dict[tuple[str, str], FakeCopy] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    staged: set[str] = field(default_factory=set)
    pools: dict[str, set[str]] = field(default_factory=dict)  # node -> pools it still has
    busy_pools: set[str] = field(default_factory=set)          # ExportPool refuses these
    replicas: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    rpo: dict[tuple[str, str], int] = field(default_factory=dict)
    sync_error: Exception | None = None
    refuse_promote: set[str] = field(default_factory=set)  # Promote on these does not answer
    now: float = 1767607200.0   # 2026-01-05T10:00:00Z, the tests' fake clock

    def _copy(self, node: str, volume: str) -> FakeCopy:
        if node in self.down:
            raise Unavailable(f"agent on {node} does not answer")
        try:
            return self.copies[(node, volume)]
        except KeyError:
            raise NotFound(f"no copy of {volume} on {node}") from None

    def calls(self, *names: str) -> list[tuple[Any, ...]]:
        return [c for c in self.log if c[0] in names]

    # -- the port ------------------------------------------------------------------------
    def copy_state(self, node: str, volume: str) -> CopyReport:
        c = self._copy(node, volume)
        return CopyReport(node, c.pool, c.role, c.epoch, c.point, c.point_time)

    def create_copy(self, node: str, volume: str, *, pool: str, size: int) -> None:
        self.log.append(("create_copy", node, pool))
        if node in self.down:
            raise Unavailable(node)
        self.copies.setdefault((node, volume), FakeCopy(pool))

    def set_replicas(self, primary: str, volume: str, replicas: Sequence[CopyTarget], *,
                     rpo_seconds: int = 0) -> None:
        self.replicas[(primary, volume)] = tuple(sorted(r.node for r in replicas))
        self.rpo[(primary, volume)] = rpo_seconds

    def promote(self, node: str, volume: str, epoch: int) -> None:
        self.log.append(("promote", node, epoch))
        if node in self.refuse_promote:
            raise Unavailable(f"agent on {node}: connection reset")
        c = self._copy(node, volume)
        if c.role == "primary" and c.epoch == epoch:
            return
        if epoch <= c.epoch:
            raise Fenced(f"{node} knows epoch {c.epoch}")
        if c.role == "seeding" and not c.blank:
            raise FailedPrecondition(f"the copy on {node} is still seeding")
        c.role, c.epoch, c.blank = "primary", epoch, False

    def demote(self, node: str, volume: str, epoch: int) -> None:
        self.log.append(("demote", node, epoch))
        c = self._copy(node, volume)
        if epoch <= c.epoch:
            if c.role == "primary":
                raise Fenced("newer")
            return
        if c.role == "primary":
            c.role = "stale"
        c.epoch = epoch

    def final_sync(self, primary: str, volume: str, to: str) -> str:
        self.log.append(("final_sync", primary, to))
        if self.sync_error is not None:
            raise self.sync_error
        if primary in self.staged:
            raise Aborted(f"{volume} is still staged on {primary}")
        p = self._copy(primary, volume)
        point = self.take_point(primary, volume)
        t = self._copy(to, volume)
        t.point, t.role, t.epoch, t.point_time = point, "replica", max(t.epoch, p.epoch), p.point_time
        return point

    def release(self, node: str, volume: str) -> None:
        self.log.append(("release", node))
        self._copy(node, volume)
        del self.copies[(node, volume)]

    def delete_copy(self, node: str, volume: str) -> None:
        """The agent's Release with ``whole``: even the primary; refused while staged."""
        self.log.append(("delete_copy", node))
        if node in self.down:
            raise Unavailable(f"agent on {node} does not answer")
        if (node, volume) not in self.copies:
            return
        if node in self.staged:
            raise FailedPrecondition(f"the copy {volume} is in use on {node}")
        del self.copies[(node, volume)]
        self.replicas.pop((node, volume), None)

    def export_pool(self, node: str, pool: str) -> None:
        self.log.append(("export_pool", node, pool))
        if node in self.down:
            raise Unavailable(f"agent on {node} does not answer")
        if pool in self.busy_pools:
            raise FailedPrecondition(f"pool {pool!r} is busy")
        held = sorted(v for (n, v), c in self.copies.items() if n == node and c.pool == pool)
        if held:
            raise FailedPrecondition(f"pool {pool!r} is not empty: {', '.join(held)}")
        self.pools.setdefault(node, set()).discard(pool)

    # -- what the primaries' replication loops would do -------------------------------------
    def take_point(self, node: str, volume: str) -> str:
        c = self.copies[(node, volume)]
        c.seq += 1
        c.point, c.point_time = f"e{c.epoch}-{c.seq}", self.now
        return c.point

    def replicate(self, volume: str = HANDLE) -> None:
        """Each live primary takes a point and every live replica it streams to applies it."""
        at = self.now
        for (node, vol), c in list(self.copies.items()):
            if vol != volume or c.role != "primary" or node in self.down:
                continue
            point = self.take_point(node, vol)
            for peer in self.replicas.get((node, vol), ()):
                r = self.copies.get((peer, vol))
                if r is None or peer in self.down or r.epoch > c.epoch:
                    continue
                r.point, r.role, r.epoch, r.point_time = point, "replica", c.epoch, at

    def made_by_create_volume(self, node: str, pool: str = "p1", volume: str = HANDLE) -> None:
        self.copies[(node, volume)] = FakeCopy(pool, blank=True)

    def writable(self, volume: str, epoch: int) -> list[str]:
        """Nodes whose copy would pass the stage-time check at the cluster's epoch."""
        return [n for (n, v), c in self.copies.items()
                if v == volume and c.role == "primary" and c.epoch == epoch]


class LoggingKube(MemoryKube):
    """MemoryKube whose ReplicatedVolume status compare-and-sets go into the agents' log
    (successful or not), so a test sees them in order with the agent calls; ``conflict``
    makes the next one lose a race (another writer changes the object first)."""

    def __init__(self, log: list[tuple[Any, ...]], **kw: Any) -> None:
        super().__init__(**kw)
        self.log = log
        self.conflicts = 0

    def replace_status(self, obj: Obj) -> Obj:
        st = obj.get("status") or {}
        if self.conflicts:
            self.conflicts -= 1
            self.patch_status(kind_of(obj), obj["metadata"]["name"], {"lagSeconds": 99.0})
        try:
            out = super().replace_status(obj)
        except Aborted:
            self.log.append(("cas-conflict", st.get("epoch"), st.get("primary")))
            raise
        self.log.append(("cas", st.get("epoch"), st.get("primary"), (st.get("moving") or {}).get("to")))
        return out


def kind_of(obj: Obj) -> Any:
    from statehold.kube.kinds import kind_of as k

    return k(obj)


def node(kube: MemoryKube, name: str, *, zone: str | None = None, ready: bool = True) -> Obj:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                 "spec": {}})
    return set_ready(kube, name, ready)


def set_ready(kube: MemoryKube, name: str, ready: bool) -> Obj:
    return kube.patch_status(NODE, name, {"conditions": [
        {"type": "Ready", "status": "True" if ready else "Unknown"}]})


def taint_out_of_service(kube: MemoryKube, name: str, on: bool = True) -> None:
    taints = [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
               "effect": "NoExecute"}] if on else None
    kube.patch(NODE, name, {"spec": {"taints": taints}})


def pool(kube: MemoryKube, name: str, node_name: str, free: int = 100 * GiB) -> None:
    kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                 "metadata": {"name": name},
                 "spec": {"node": node_name, "directory": "/var/lib/statehold",
                          "imageSize": "200Gi"}})
    kube.patch_status(STORAGE_POOL, name, {"phase": "Ready", "capacity": 200 * GiB,
                                           "allocatable": free})


def replicated_pv(kube: MemoryKube, name: str = "pvc-1", *, handle: str = HANDLE,
                  node_name: str = "n1", replicas: int = 2, size: str = "10Gi",
                  rpo: int = 15) -> Obj:
    from statehold.replication.points import node_label

    return kube.create({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "claimRef": {"namespace": "db", "name": "data"},
                 "csi": {"driver": "csi.statehold.io", "volumeHandle": handle, "fsType": "xfs",
                         "volumeAttributes": {"statehold.io/type": "local",
                                              "statehold.io/replicas": str(replicas),
                                              "statehold.io/rpo-seconds": str(rpo),
                                              "statehold.io/node": node_name}},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": node_label(handle), "operator": "In", "values": ["true"]}]}]}}}})
