"""Local PV discovery: the node's disks and mounts under a directory become Local PVs.

The host-based approach for node disks (what sig-storage's local-static-provisioner does):
an administrator mounts filesystems (or links block devices) under a discovery directory,
e.g. ``/mnt/disks/ssd1``; the node-side discoverer offers each one as a Local
PersistentVolume pinned to the node (``kubernetes.io/hostname``). When its claim is
deleted the PV turns ``Released``: the discoverer wipes it (directory contents, or the
device's signatures), deletes the PV and offers the disk again as a fresh Available PV.

Three parts, so the decisions are testable with tables:

* :func:`plan` — pure: discovered disks + the PVs that exist → ordered actions;
* :func:`scan` — reads the discovery directory (mount points and block devices);
* :class:`Discoverer` — applies a plan through a :class:`PvApi` (the Kubernetes adapter
  implements it with the kube facade; this package never imports Kubernetes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from statehold.engine.mounts import Mount, mount_at
from statehold.engine.mounts import mounts as read_mounts
from statehold.errors import AlreadyExists, NotFound, StateholdError, Unavailable
from statehold.runner import run
from statehold.shared.copying import remove_tree
from statehold.shared.traits import NETWORK_FSTYPES

log = logging.getLogger("statehold.shared.discovery")

LABEL_OWNER = "statehold.io/discovered-by"
OWNER = "local-discovery"
LABEL_NODE = "statehold.io/node"
ANNOTATION_PATH = "statehold.io/path"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
PROVISIONER = "statehold.io/local-discovery"
HOSTNAME_KEY = "kubernetes.io/hostname"

Mode = Literal["Filesystem", "Block"]


@dataclass(frozen=True, slots=True)
class Disk:
    """One thing found under the discovery directory."""

    name: str
    path: str
    mode: Mode
    capacity: int


@dataclass(frozen=True, slots=True)
class PvView:
    """What discovery needs to know about one of its PVs."""

    name: str
    path: str
    phase: str          # Pending | Available | Bound | Released | Failed
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """``create`` a PV for disk, ``wipe`` a disk's data, ``delete`` a PV, ``warn``."""

    kind: Literal["create", "wipe", "delete", "warn"]
    disk: Disk | None = None
    pv: str = ""
    message: str = ""


def pv_name(node: str, path: str) -> str:
    """Deterministic, DNS-safe: the same disk on the same node always gets the same name."""
    return "local-" + hashlib.sha256(f"{node}\x00{path}".encode()).hexdigest()[:20]


def plan(disks: Sequence[Disk], pvs: Sequence[PvView]) -> list[Action]:
    """Actions in order. Per disk: no PV → create; Released → wipe, delete, create;
    a PV being deleted → wait. A PV whose disk is gone: Available → delete (never offer
    what is not there); Bound → warn (the pod's data is missing)."""
    by_path = {pv.path: pv for pv in pvs}
    actions: list[Action] = []
    for disk in sorted(disks, key=lambda d: d.path):
        pv = by_path.get(disk.path)
        if pv is None:
            actions.append(Action("create", disk=disk))
        elif pv.deleting:
            continue
        elif pv.phase == "Released":
            actions += [Action("wipe", disk=disk, pv=pv.name), Action("delete", pv=pv.name),
                        Action("create", disk=disk)]
    present = {d.path for d in disks}
    for pv in sorted(pvs, key=lambda p: p.name):
        if pv.path in present or pv.deleting:
            continue
        if pv.phase in ("Available", "Pending", "Released"):
            actions.append(Action("delete", pv=pv.name, message=f"{pv.path} is gone"))
        else:
            actions.append(Action("warn", pv=pv.name, message=f"{pv.path} of {pv.phase} PV is gone"))
    return actions


def pv_manifest(disk: Disk, *, node: str, storage_class: str) -> dict[str, Any]:
    """The PersistentVolume offering ``disk``: pinned to ``node``, reclaimed by us."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(node, disk.path),
            "labels": {LABEL_OWNER: OWNER, LABEL_NODE: node},
            # An external provisioner's name makes the PV controller leave Released PVs to us.
            "annotations": {ANNOTATION_PATH: disk.path, PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": str(disk.capacity)},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": storage_class,
            "volumeMode": disk.mode,
            "local": {"path": disk.path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_KEY, "operator": "In", "values": [node]}]}]}},
        },
    }


def pv_view(obj: dict[str, Any]) -> PvView:
    meta = obj.get("metadata", {})
    local_path = obj.get("spec", {}).get("local", {}).get("path", "")
    path = meta.get("annotations", {}).get(ANNOTATION_PATH) or local_path
    return PvView(name=meta.get("name", ""), path=str(path),
                  phase=str(obj.get("status", {}).get("phase", "Pending")),
                  deleting=bool(meta.get("deletionTimestamp")))


def scan(directory: Path, mounts: list[Mount] | None = None) -> list[Disk]:
    """Mount points (Filesystem) and block devices or links to them (Block) directly under
    ``directory``; anything else (a plain directory not yet mounted) is not a disk, and
    neither is a network filesystem mounted there (an SMB share, NFS, GlusterFS...): its
    data is not this node's, and smbnetfs reports its size as 0."""
    mounts = read_mounts() if mounts is None else mounts
    disks: list[Disk] = []
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError as exc:
        raise NotFound(f"discovery directory {directory} does not exist") from exc
    for entry in entries:
        try:
            st = os.stat(entry)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            disks.append(Disk(entry.name, str(entry), "Block", _device_size(entry)))
        elif stat.S_ISDIR(st.st_mode) and (entry_mount := mount_at(entry, mounts)) is not None:
            if entry_mount.fstype in NETWORK_FSTYPES:
                log.info("discovery skips a network filesystem path=%s fstype=%s", entry, entry_mount.fstype)
                continue
            vfs = os.statvfs(entry)
            disks.append(Disk(entry.name, str(entry), "Filesystem", vfs.f_blocks * vfs.f_frsize))
    return disks


def _device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def wipe(disk: Disk) -> None:
    """Erase what the last claim left: directory contents (the mount point stays), or the
    device's filesystem signatures (``wipefs -a``) so the next pod starts blank."""
    if disk.mode == "Block":
        run(["wipefs", "-a", disk.path], timeout=120)
        return
    root = Path(disk.path)
    try:
        children = list(root.iterdir())
        for child in children:
            if child.name != "lost+found":
                remove_tree(child)
    except (OSError, StateholdError) as exc:
        raise Unavailable(f"cannot wipe {disk.path}: {exc}") from exc


class PvApi(Protocol):
    """The Kubernetes side discovery needs; implemented over the kube facade."""

    def list_pvs(self, node: str) -> list[dict[str, Any]]:
        """This node's discovery PVs (label ``statehold.io/node``)."""
        ...

    def create_pv(self, manifest: dict[str, Any]) -> None:
        """Create; AlreadyExists when the name is taken."""
        ...

    def delete_pv(self, name: str) -> None:
        """Delete; NotFound when absent."""
        ...

    def warn(self, pv: str, message: str) -> None:
        """Tell a human (an Event on the PV)."""
        ...


class Discoverer:
    """One node's discovery loop body: scan, plan, act. Safe to run again at any time."""

    def __init__(self, api: PvApi, *, node: str, directory: Path, storage_class: str) -> None:
        self.api, self.node, self.directory, self.storage_class = api, node, directory, storage_class

    def run_once(self, disks: Iterable[Disk] | None = None) -> list[Action]:
        """Apply one plan; returns the actions done. A failed wipe skips that disk's
        delete/create (the PV stays Released and is retried next time)."""
        found = list(disks) if disks is not None else scan(self.directory)
        pvs = [pv_view(o) for o in self.api.list_pvs(self.node)]
        done: list[Action] = []
        failed: set[str] = set()
        for action in plan(found, pvs):
            if action.disk is not None and action.disk.path in failed:
                continue
            if action.kind == "delete" and action.pv in {pv_name(self.node, p) for p in failed}:
                continue
            try:
                self._apply(action)
            except StateholdError as exc:
                log.warning("discovery action failed kind=%s pv=%s err=%s", action.kind, action.pv, exc)
                if action.disk is not None:
                    failed.add(action.disk.path)
                continue
            done.append(action)
        return done

    def _apply(self, action: Action) -> None:
        if action.kind == "create":
            assert action.disk is not None
            with contextlib.suppress(AlreadyExists):
                self.api.create_pv(pv_manifest(action.disk, node=self.node, storage_class=self.storage_class))
        elif action.kind == "wipe":
            assert action.disk is not None
            wipe(action.disk)
        elif action.kind == "delete":
            with contextlib.suppress(NotFound):
                self.api.delete_pv(action.pv)
        else:
            self.api.warn(action.pv, action.message)
