"""What each page shows, read through the Kube facade into plain rows (no HTML here).

Every function takes the dashboard's own Kube (its identity reads; it never writes) and
returns dataclasses the pages render. Missing status fields show as empty, never raise:
an object the operator has not reconciled yet is still listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statehold.errors import NotFound
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    PV,
    PVC,
    REPLICATED_VOLUME,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
    VOLUME_SNAPSHOT,
)

DRIVER = "csi.statehold.io"
TOPOLOGY_KEYS = ("topology.statehold.io/node", "kubernetes.io/hostname")


def _status(o: Obj) -> dict[str, Any]:
    return dict(o.get("status") or {})


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def ready_reason(o: Obj) -> str:
    for c in _status(o).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason") or c.get("status") or "")
    return ""


def pv_node(pv: Obj) -> str:
    """The node a PV's required node affinity pins it to ("" when none)."""
    terms = ((((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {})
             .get("nodeSelectorTerms") or [])
    for key in TOPOLOGY_KEYS:
        for term in terms:
            for expr in term.get("matchExpressions") or []:
                if expr.get("key") == key and expr.get("operator") == "In" and expr.get("values"):
                    return str(expr["values"][0])
    return ""


@dataclass(frozen=True, slots=True)
class PoolRow:
    name: str
    node: str
    phase: str
    capacity: int
    allocated: int
    provisioned: int
    free: int
    volumes: int

    @property
    def used_percent(self) -> float:
        """Allocated bytes as a share of capacity (what the bar shows), 0..100."""
        return round(100.0 * self.allocated / self.capacity, 1) if self.capacity else 0.0


def pools(kube: Kube) -> list[PoolRow]:
    rows = []
    for p in kube.list(STORAGE_POOL):
        st = _status(p)
        rows.append(PoolRow(p["metadata"]["name"], str((p.get("spec") or {}).get("node", "")),
                            str(st.get("phase") or "Pending"), _int(st.get("capacity")),
                            _int(st.get("allocated")), _int(st.get("provisioned")),
                            _int(st.get("free")), _int(st.get("volumes"))))
    return rows


@dataclass(frozen=True, slots=True)
class VolumeRow:
    namespace: str
    claim: str
    volume: str
    node: str
    size: str
    state: str
    copies: str


def volumes(kube: Kube) -> list[VolumeRow]:
    """One row per Statehold PV: its claim, node, size, state and copies. (A volume's
    filesystem usage is in no custom resource: the node agent's metrics carry it.)"""
    records = {r["metadata"]["name"]: r for r in kube.list(REPLICATED_VOLUME)}
    rows = []
    for pv in kube.list(PV):
        spec = pv.get("spec") or {}
        if (spec.get("csi") or {}).get("driver") != DRIVER:
            continue
        ref = spec.get("claimRef") or {}
        rv = records.get(pv["metadata"]["name"])
        rst = _status(rv) if rv else {}
        if rv is None:
            copies = "1/1"
        else:
            serving = [c for c in rst.get("copies") or []
                       if c.get("state") in ("Serving", "InSync", "Lagging")]
            copies = f"{len(serving)}/{(rv.get('spec') or {}).get('replicas', 1)}"
        rows.append(VolumeRow(str(ref.get("namespace", "")), str(ref.get("name", "")),
                              pv["metadata"]["name"], str(rst.get("primary") or pv_node(pv)),
                              str((spec.get("capacity") or {}).get("storage", "")),
                              str(_status(pv).get("phase", "")), copies))
    return rows


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    namespace: str
    name: str
    claim: str
    ready: bool
    size: str
    created: str


def snapshots(kube: Kube) -> list[SnapshotRow]:
    rows = []
    for s in kube.list(VOLUME_SNAPSHOT):
        st = _status(s)
        rows.append(SnapshotRow(s["metadata"].get("namespace", ""), s["metadata"]["name"],
                                str(((s.get("spec") or {}).get("source") or {})
                                    .get("persistentVolumeClaimName", "")),
                                bool(st.get("readyToUse")), str(st.get("restoreSize", "")),
                                str(st.get("creationTime")
                                    or s["metadata"].get("creationTimestamp", ""))))
    return rows


@dataclass(frozen=True, slots=True)
class BackupRow:
    name: str
    target: str
    phase: str
    started: str
    bytes_total: int
    reason: str


@dataclass(slots=True)
class Timeline:
    """A claim's backups, oldest first."""

    namespace: str
    claim: str
    backups: list[BackupRow] = field(default_factory=list)


def backups(kube: Kube) -> list[Timeline]:
    lines: dict[tuple[str, str], Timeline] = {}
    for b in kube.list(VOLUME_BACKUP):
        ns = b["metadata"].get("namespace", "")
        claim = str((b.get("spec") or {}).get("persistentVolumeClaimName", ""))
        st = _status(b)
        line = lines.setdefault((ns, claim), Timeline(ns, claim))
        line.backups.append(BackupRow(
            b["metadata"]["name"], str((b.get("spec") or {}).get("target", "")),
            str(st.get("phase") or "Pending"),
            str(st.get("startTime") or b["metadata"].get("creationTimestamp", "")),
            _int(st.get("bytesTotal")), ready_reason(b)))
    for line in lines.values():
        line.backups.sort(key=lambda r: (r.started, r.name))
    return [lines[k] for k in sorted(lines)]


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    namespace: str
    name: str
    schedule: str
    target: str
    last: str
    next: str
    reason: str


def schedules(kube: Kube) -> list[ScheduleRow]:
    rows = []
    for s in kube.list(BACKUP_SCHEDULE):
        spec, st = s.get("spec") or {}, _status(s)
        rows.append(ScheduleRow(s["metadata"].get("namespace", ""), s["metadata"]["name"],
                                str(spec.get("schedule", "")), str(spec.get("target", "")),
                                str(st.get("lastScheduleTime") or ""),
                                str(st.get("nextScheduleTime") or ""), ready_reason(s)))
    return rows


@dataclass(frozen=True, slots=True)
class RestoreRow:
    namespace: str
    name: str
    backup: str
    claim: str
    phase: str
    reason: str


def restores(kube: Kube) -> list[RestoreRow]:
    rows = []
    for r in kube.list(VOLUME_RESTORE):
        spec, st = r.get("spec") or {}, _status(r)
        rows.append(RestoreRow(r["metadata"].get("namespace", ""), r["metadata"]["name"],
                               str(spec.get("backup", "")),
                               str(spec.get("persistentVolumeClaimName", "")),
                               str(st.get("phase") or "Pending"), ready_reason(r)))
    return rows


def targets(kube: Kube, namespace: str) -> list[str]:
    return [t["metadata"]["name"] for t in kube.list(BACKUP_TARGET, namespace)]


def claim_exists(kube: Kube, namespace: str, claim: str) -> bool:
    try:
        kube.get(PVC, claim, namespace)
    except NotFound:
        return False
    return True
