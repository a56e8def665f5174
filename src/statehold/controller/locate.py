"""Where a PVC's data lives: PVC -> PV -> (node, pool, volume). Pure functions on raw JSON.

A Statehold local PV has ``spec.csi.driver == DRIVER``, ``volumeHandle "<pool>/<volume>"``
and node affinity on ``TOPOLOGY_KEY`` (both fixed by the CSI plugin; a test checks they
match ``statehold.csi``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statehold.controller.problems import Problem
from statehold.engine.names import parse_size
from statehold.kube.objects import PersistentVolume, PersistentVolumeClaim

DRIVER = "csi.statehold.io"
TOPOLOGY_KEY = "topology.statehold.io/node"
SHARED_PREFIX = "shared/"


@dataclass(frozen=True, slots=True)
class VolumeLocation:
    node: str
    pool: str
    volume: str
    size: int
    pv: str
    fs_type: str

    @property
    def handle(self) -> str:
        return f"{self.pool}/{self.volume}"


def is_statehold_pv(pv: Mapping[str, Any]) -> bool:
    """Whether a PV (raw or typed) was provisioned by Statehold's CSI driver."""
    return bool(((pv.get("spec") or {}).get("csi") or {}).get("driver") == DRIVER)


def pv_node(pv: PersistentVolume) -> str | None:
    """The node a PV's required node affinity pins it to (our topology key, else hostname)."""
    terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
        "nodeSelectorTerms") or []
    for key in (TOPOLOGY_KEY, "kubernetes.io/hostname"):
        for term in terms:
            for expr in term.get("matchExpressions") or []:
                if expr.get("key") == key and expr.get("operator") == "In" and expr.get("values"):
                    return str(expr["values"][0])
    return None


def check_pvc_bound(pvc: PersistentVolumeClaim) -> str:
    """The bound PV's name, or a retryable Problem."""
    name = pvc["metadata"]["name"]
    pv_name = (pvc.get("spec") or {}).get("volumeName")
    phase = (pvc.get("status") or {}).get("phase")
    if not pv_name or phase not in (None, "Bound"):
        raise Problem("PVCNotBound", f"PVC {name} is not bound to a volume yet (phase {phase})",
                      retry_after=15)
    return str(pv_name)


def locate(pvc: PersistentVolumeClaim, pv: PersistentVolume) -> VolumeLocation:
    """Where pvc's volume is; a permanent Problem when it is not a Statehold local volume."""
    name = pvc["metadata"]["name"]
    csi = (pv.get("spec") or {}).get("csi") or {}
    driver = csi.get("driver")
    if driver != DRIVER:
        what = f"CSI driver {driver}" if driver else "a non-CSI volume plugin"
        raise Problem("UnsupportedDriver", f"PVC {name} is provisioned by {what}, not {DRIVER}; "
                      "Statehold backs up only its own volumes", permanent=True)
    handle = str(csi.get("volumeHandle") or "")
    if handle.startswith(SHARED_PREFIX):
        raise Problem("UnsupportedVolume", f"PVC {name} is a shared volume ({handle}); volume "
                      "backups take local volumes", permanent=True)
    pool, sep, volume = handle.partition("/")
    if not sep or not pool or not volume or "/" in volume:
        raise Problem("BadVolumeHandle", f"PV {pv['metadata']['name']} has volume handle "
                      f"{handle!r}, expected <pool>/<volume>", permanent=True)
    node = pv_node(pv)
    if node is None:
        raise Problem("NoNodeAffinity", f"PV {pv['metadata']['name']} names no node", permanent=True)
    capacity = ((pv.get("spec") or {}).get("capacity") or {}).get("storage", "0")
    return VolumeLocation(node=node, pool=pool, volume=volume, size=parse_size(str(capacity)),
                          pv=pv["metadata"]["name"], fs_type=str(csi.get("fsType") or ""))
