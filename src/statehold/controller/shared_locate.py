"""Shared volumes in backups and restores: pure decisions on raw JSON, table-tested.

A shared volume (``type: shared``) is a directory on a filesystem every node reaches, so
unlike a local volume it is not pinned to the node that holds it: its PV has volume handle
``shared/<root key>/<name>``, no node affinity, and ``volumeAttributes`` that describe the
root (``sharedRoot``, or ``source``/``fsType``/``mountOptions``). Its backups are file-tree
backups made by the shared backend, not images of a block volume. The functions here say

* whether a PV is shared and what the agent needs to reach it (:func:`locate_shared`);
* which node's agent does the work (:func:`choose_node`: any node running our driver, the
  same one for every backup of a volume);
* whether a backup may be restored into a StorageClass (:func:`restore_kind`), and with
  which access modes (:func:`check_access_modes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from statehold.controller.locate import DRIVER, SHARED_PREFIX, is_statehold_pv
from statehold.controller.problems import Problem
from statehold.engine.names import parse_size
from statehold.kube.objects import PersistentVolume, PersistentVolumeClaim

VolumeKind = Literal["local", "shared"]
MULTI_NODE_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})
ROOT_ATTRIBUTES = ("sharedRoot", "source", "server", "share", "fsType", "mountOptions")


@dataclass(frozen=True, slots=True)
class SharedLocation:
    """What an agent needs to back up a shared volume: its id and its root's description."""

    handle: str
    root_key: str
    name: str
    size: int
    pv: str
    root: Mapping[str, str] = field(default_factory=dict)


def handle_kind(handle: str) -> VolumeKind:
    return "shared" if handle.startswith(SHARED_PREFIX) else "local"


def is_shared_pv(pv: PersistentVolume) -> bool:
    csi = (pv.get("spec") or {}).get("csi") or {}
    return is_statehold_pv(pv) and handle_kind(str(csi.get("volumeHandle") or "")) == "shared"


def locate_shared(pvc: PersistentVolumeClaim, pv: PersistentVolume) -> SharedLocation:
    """The shared volume behind pvc; a permanent Problem when the PV is malformed."""
    csi = (pv.get("spec") or {}).get("csi") or {}
    handle = str(csi.get("volumeHandle") or "")
    pv_name = pv["metadata"]["name"]
    parts = handle.split("/")
    if len(parts) != 3 or not parts[1].isalnum() or not parts[2]:
        raise Problem("BadVolumeHandle", f"PV {pv_name} has volume handle {handle!r}, expected "
                      "shared/<root key>/<name>", permanent=True)
    attrs = {str(k): str(v) for k, v in (csi.get("volumeAttributes") or {}).items()}
    root = {k: attrs[k] for k in ROOT_ATTRIBUTES if attrs.get(k)}
    if not any(k in root for k in ("sharedRoot", "source", "server")):
        raise Problem("NoSharedRoot", f"PV {pv_name} of PVC {pvc['metadata']['name']} does not "
                      "describe its shared root (volumeAttributes sharedRoot or source)",
                      permanent=True)
    capacity = ((pv.get("spec") or {}).get("capacity") or {}).get("storage", "0")
    return SharedLocation(handle=handle, root_key=parts[1], name=parts[2],
                          size=parse_size(str(capacity)), pv=pv_name, root=root)


def driver_nodes(csinodes: Iterable[dict[str, Any]], driver: str = DRIVER) -> list[str]:
    """Nodes whose kubelet registered our driver (CSINode): the ones running an agent."""
    out = {c["metadata"]["name"] for c in csinodes
           if any(d.get("name") == driver for d in (c.get("spec") or {}).get("drivers") or [])}
    return sorted(out)


def choose_node(handle: str, nodes: Iterable[str], preferred: str | None = None) -> str:
    """The node whose agent backs up a shared volume: ``preferred`` if it runs one, else the
    highest rendezvous hash of (node, volume) -- the same node for every backup of a volume
    while the set of nodes stays, and volumes spread over nodes. Retryable Problem when no
    node runs our driver."""
    candidates = sorted(set(nodes))
    if not candidates:
        raise Problem("NoAgentNode", f"no node runs the {DRIVER} node plugin yet", retry_after=60)
    if preferred and preferred in candidates:
        return preferred
    return max(candidates, key=lambda n: hashlib.sha256(f"{n}\0{handle}".encode()).digest())


def class_kind(storage_class: dict[str, Any]) -> VolumeKind:
    kind = str((storage_class.get("parameters") or {}).get("type") or "local")
    return "shared" if kind == "shared" else "local"


def restore_kind(backup_handle: str, storage_class: dict[str, Any]) -> VolumeKind:
    """What a restore makes: a backup of a shared volume (a file tree) restores only into a
    shared class, a local one (an image) only into a local class."""
    backup, target = handle_kind(backup_handle), class_kind(storage_class)
    if backup != target:
        name = storage_class["metadata"]["name"]
        raise Problem("BackupKindMismatch", f"the backup is of a {backup} volume; StorageClass "
                      f"{name} makes {target} volumes (pick a {backup} class)", permanent=True)
    return target


def check_access_modes(modes: Iterable[str], kind: VolumeKind) -> list[str]:
    """The restored PVC's access modes; the many-node modes only for shared volumes."""
    wanted = list(modes) or (["ReadWriteMany"] if kind == "shared" else ["ReadWriteOnce"])
    many = sorted(MULTI_NODE_MODES.intersection(wanted))
    if many and kind == "local":
        raise Problem("UnsupportedAccessMode", f"{', '.join(many)} needs a shared StorageClass: "
                      "a local volume lives on one node", permanent=True)
    return wanted
