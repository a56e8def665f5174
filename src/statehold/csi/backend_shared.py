"""The CSI backend for ``type: shared``: volumes as directories on a shared filesystem.

A translator over :mod:`statehold.shared`: it turns StorageClass parameters into a
:class:`~statehold.shared.registry.RootSpec`, ids into (root, name) and core objects into
CSI answers. Ids are ``shared/<root key>/<name>`` for volumes and snapshots alike.

StorageClass parameters::

    type: shared
    sharedRoot: /mnt/share            # host-based: the share is mounted there on every node
    source: 10.0.0.5:/vol0            # native: we mount it (or server: + share:)
    fsType: glusterfs | nfs | nfs4 | cephfs
    mountOptions: "opt1,opt2"
    deletionPolicy: delete | retain | archive      (default delete)
    enforceQuota: "true" | "false"                 (default false)

Node side: NodeStage mounts the share (native, once per node, counted per volume) and
bind-mounts the volume's directory at the staging path; NodePublish binds the staging path
into the pod (read-only for reader modes or readonly requests). No filesystem is created
or grown: ControllerExpand raises the quota online and NodeExpand has nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository
from statehold.csi.backend import (
    ALL_MODES,
    SHARED_PREFIX,
    AccessMode,
    BackendConfig,
    CapacityInfo,
    ContentSource,
    ExpandInfo,
    PublishRequest,
    SnapshotInfo,
    StageRequest,
    VolumeInfo,
    VolumeRequest,
    VolumeStats,
)
from statehold.engine.mounts import bind, mount_at, unmount
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from statehold.shared.backups import backup_volume, restore_volume
from statehold.shared.names import validate_name
from statehold.shared.registry import NATIVE, RootRegistry, RootSpec
from statehold.shared.root import SharedRoot
from statehold.shared.share import ShareMounter
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import DeletionPolicy, SharedSnapshot, Source, SourceKind, VolumeEvent

log = logging.getLogger("statehold.csi.shared")
DEFAULT_SIZE = 1024**3
READER_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})
CONTROLLER_USER = "controller"


def split_id(object_id: str) -> tuple[str, str]:
    """``shared/<key>/<name>`` → (key, name); InvalidArgument when malformed."""
    parts = object_id.split("/")
    if len(parts) != 3 or parts[0] + "/" != SHARED_PREFIX or not parts[1] or not parts[2]:
        raise InvalidArgument(f"{object_id!r} is not a shared volume or snapshot id")
    return parts[1], validate_name(parts[2])


def make_id(key: str, name: str) -> str:
    return f"{SHARED_PREFIX}{key}/{name}"


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidArgument(f"parameter {name}={value!r} must be \"true\" or \"false\"")
    return value == "true"


def _policy(params: Mapping[str, str]) -> DeletionPolicy:
    value = params.get("deletionPolicy", "delete").strip().lower()
    try:
        return DeletionPolicy(value)
    except ValueError:
        raise InvalidArgument(f"deletionPolicy {value!r} is not delete, retain or archive") from None


class SharedBackend:
    kind = "shared"
    access_modes = ALL_MODES
    supports_block = False
    needs_staging = True

    def __init__(self, config: BackendConfig, *,
                 on_event: Callable[[VolumeEvent], None] | None = None) -> None:
        self.config = config
        self.registry = RootRegistry(config.home)
        self.mounter = ShareMounter(config.home / "shared")
        self.on_event = on_event

    # ---- roots ---------------------------------------------------------------------------
    def _open(self, spec: RootSpec, *, user: str = CONTROLLER_USER) -> SharedRoot:
        """The root on this host; mounts a native share (counted as ``user``) if needed."""
        if spec.style == NATIVE:
            assert spec.share is not None
            path = self.mounter.acquire(spec.share, user)
        else:
            assert spec.path is not None
            path = spec.path
        return SharedRoot(path, on_event=self.on_event)

    def _root(self, key: str) -> SharedRoot:
        return self._open(self.registry.lookup(key))

    def root_for(self, key: str) -> SharedRoot:
        """The root of a registered key, as this host sees it (the monitor's entry)."""
        return self._root(key)

    def _node_root(self, key: str) -> SharedRoot:
        """The root as this node sees it, without taking a new mount reference."""
        spec = self.registry.lookup(key)
        if spec.style == NATIVE:
            assert spec.share is not None
            target = self.mounter.target(spec.share)
            if mount_at(target) is None:
                raise NotFound(f"shared root {key} is not mounted on this node")
            return SharedRoot(target, on_event=self.on_event)
        return self._open(spec)

    def _info(self, key: str, root: SharedRoot, name: str, spec: RootSpec | None = None) -> VolumeInfo:
        vol = root.get_volume(name)
        usage = root.usage(name)
        spec = spec or self.registry.lookup(key)
        source = None
        if vol.source is not None:
            source = ContentSource(kind=str(vol.source.kind), id=make_id(key, vol.source.name))
        context = {"statehold.io/type": "shared", "rootKey": key, "name": name, **spec.to_context()}
        return VolumeInfo(volume_id=make_id(key, name), capacity_bytes=vol.size, block=False,
                          context=context, source=source, abnormal=usage.abnormal,
                          message=usage.message)

    # ---- controller ----------------------------------------------------------------------
    def create_volume(self, req: VolumeRequest) -> VolumeInfo:
        if req.block:
            raise InvalidArgument("shared volumes are directories: block mode is not offered")
        validate_name(req.name)
        size = req.required_bytes or DEFAULT_SIZE
        if req.limit_bytes and size > req.limit_bytes:
            size = req.limit_bytes if not req.required_bytes else size
            if size > req.limit_bytes:
                raise OutOfRange(f"required {req.required_bytes} exceeds limit {req.limit_bytes}")
        policy, enforce = _policy(req.parameters), _flag(req.parameters, "enforceQuota")
        spec = RootSpec.from_parameters(req.parameters)
        root = self._open(spec)
        key = self.registry.remember(spec)
        source = None
        if req.source is not None:
            src_key, src_name = split_id(req.source.id)
            if src_key != key:
                raise InvalidArgument("a shared volume can only be cloned from the same shared root")
            source = Source(SourceKind(req.source.kind), src_name)
        root.create_volume(req.name, size, policy=policy, enforce=enforce, source=source)
        return self._info(key, root, req.name, spec)

    def delete_volume(self, volume_id: str) -> None:
        key, name = split_id(volume_id)
        try:
            spec = self.registry.lookup(key)
        except NotFound as exc:
            # Not "already gone": every node's provisioner may be asked to delete a shared
            # PV, and answering OK where the root is unknown would drop the PV and leave
            # the directory behind. Retryable, so a node that knows the root deletes it.
            raise Unavailable(f"shared root {key} is not known on this host; "
                              f"cannot delete {volume_id} here") from exc
        root = self._open(spec)
        if not root.exists(name):
            raise NotFound(f"volume {volume_id} does not exist")
        root.delete_volume(name)  # also finishes a crashed create or delete

    def get_volume(self, volume_id: str) -> VolumeInfo:
        key, name = split_id(volume_id)
        return self._info(key, self._root(key), name)

    def list_volumes(self) -> Sequence[VolumeInfo]:
        out: list[VolumeInfo] = []
        for key in self.registry.known():
            root = self._root(key)
            out.extend(self._info(key, root, v.name) for v in root.list_volumes())
        return sorted(out, key=lambda v: v.volume_id)

    def capacity(self, parameters: Mapping[str, str], segment: Mapping[str, str] | None) -> CapacityInfo:
        root = self._open(RootSpec.from_parameters(parameters))
        st = os.statvfs(root.path)
        return CapacityInfo(available=st.f_bavail * st.f_frsize)

    def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> ExpandInfo:
        key, name = split_id(volume_id)
        if limit_bytes and required_bytes > limit_bytes:
            raise OutOfRange(f"required {required_bytes} exceeds limit {limit_bytes}")
        try:
            spec = self.registry.lookup(key)
        except NotFound:
            if not self.config.expand_on_node:
                raise
            # the central resizer's process sees no shares: the node raises the limit
            return ExpandInfo(capacity_bytes=required_bytes, node_expansion_required=True)
        root = self._open(spec)
        current = root.get_volume(name).size
        vol = root.expand_volume(name, max(current, required_bytes))
        return ExpandInfo(capacity_bytes=vol.size, node_expansion_required=False)

    # ---- snapshots -----------------------------------------------------------------------
    @staticmethod
    def _snap_info(key: str, snap: SharedSnapshot) -> SnapshotInfo:
        created = datetime.fromisoformat(snap.created).timestamp() if snap.created else 0.0
        return SnapshotInfo(snapshot_id=make_id(key, snap.name), source_volume_id=make_id(key, snap.volume),
                            size_bytes=snap.size, created_at=created, ready=snap.ready)

    def create_snapshot(self, source_volume_id: str, name: str,
                        parameters: Mapping[str, str]) -> SnapshotInfo:
        key, volume = split_id(source_volume_id)
        store = SnapshotStore(self._root(key))
        return self._snap_info(key, store.create(volume, name))

    def delete_snapshot(self, snapshot_id: str) -> None:
        key, name = split_id(snapshot_id)
        store = SnapshotStore(self._root(key))
        store.get(name)
        store.delete(name)

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        key, name = split_id(snapshot_id)
        return self._snap_info(key, SnapshotStore(self._root(key)).get(name))

    def list_snapshots(self, source_volume_id: str | None = None) -> Sequence[SnapshotInfo]:
        want: tuple[str, str] | None = split_id(source_volume_id) if source_volume_id else None
        out: list[SnapshotInfo] = []
        for key in self.registry.known():
            if want is not None and want[0] != key:
                continue
            store = SnapshotStore(self._root(key))
            out.extend(self._snap_info(key, s) for s in store.list(want[1] if want else None))
        return sorted(out, key=lambda s: s.snapshot_id)

    # ---- backups (not CSI: for the operator and the CLI) -----------------------------------
    def backup(self, volume_id: str, repo: Repository, *, snapshot: bool = True,
               labels: Mapping[str, str] | None = None) -> Manifest:
        """A file-tree backup of the volume, listed under its volume id; ``labels`` (the
        PVC, namespace and VolumeBackup, as block backups record them) go into its manifest."""
        key, name = split_id(volume_id)
        return backup_volume(repo, self._root(key), name, volume_key=volume_id, snapshot=snapshot,
                             labels=labels)

    def restore(self, backup_id: str, repo: Repository, name: str, parameters: Mapping[str, str],
                size: int | None = None) -> VolumeInfo:
        """A new volume ``name`` (on the root the parameters describe) holding the backup."""
        spec = RootSpec.from_parameters(parameters)
        root = self._open(spec)
        key = self.registry.remember(spec)
        restore_volume(repo, backup_id, root, name, size=size, policy=_policy(parameters),
                       enforce=_flag(parameters, "enforceQuota"))
        return self._info(key, root, name, spec)

    # ---- node ----------------------------------------------------------------------------
    def node_stage(self, req: StageRequest) -> None:
        if req.capability.block:
            raise InvalidArgument("shared volumes are directories: block mode is not offered")
        key, name = split_id(req.volume_id)
        described = any(req.context.get(k) for k in ("sharedRoot", "source", "server"))
        spec = RootSpec.from_parameters(req.context) if described else self.registry.lookup(key)
        if spec.key != key:
            raise InvalidArgument(f"volume context describes root {spec.key}, the id names {key}")
        self.registry.remember(spec)
        root = self._open(spec, user=req.volume_id)
        try:
            vol = root.get_volume(name)
            if mount_at(req.staging_path) is not None:
                if not _same_dir(req.staging_path, vol.path):
                    raise AlreadyExists(f"{req.staging_path} holds another mount")
                return
            bind(vol.path, req.staging_path)
        except BaseException:
            if spec.share is not None and mount_at(req.staging_path) is None:
                self.mounter.release(spec.share, req.volume_id)
            raise

    def node_unstage(self, volume_id: str, staging_path: Path) -> None:
        key, _name = split_id(volume_id)
        spec = self.registry.lookup(key)
        unmount(staging_path, remove_dir=False)
        if spec.share is not None:
            self.mounter.release(spec.share, volume_id)

    def node_publish(self, req: PublishRequest) -> None:
        split_id(req.volume_id)
        if req.staging_path is None or mount_at(req.staging_path) is None:
            raise FailedPrecondition(f"volume {req.volume_id} is not staged on this node")
        readonly = req.readonly or req.capability.mode in READER_MODES
        entry = mount_at(req.target_path)
        if entry is not None:
            if not _same_dir(req.target_path, req.staging_path):
                raise AlreadyExists(f"{req.target_path} holds another mount")
            if ("ro" in entry.options) != readonly:
                raise AlreadyExists(f"{req.target_path} is published with readonly={not readonly}")
            return
        bind(req.staging_path, req.target_path, readonly=readonly)

    def node_unpublish(self, volume_id: str, target_path: Path) -> None:
        split_id(volume_id)
        unmount(target_path, remove_dir=True)

    def node_stats(self, volume_id: str, volume_path: Path) -> VolumeStats:
        key, name = split_id(volume_id)
        if mount_at(volume_path) is None:
            raise NotFound(f"volume {volume_id} is not mounted at {volume_path}")
        usage = self._node_root(key).usage(name)
        inodes_total = inodes_used = inodes_free = None
        with contextlib.suppress(OSError):
            st = os.statvfs(volume_path)
            if st.f_files:
                inodes_total, inodes_free = st.f_files, st.f_favail
                inodes_used = st.f_files - st.f_ffree
        return VolumeStats(bytes_total=usage.size, bytes_used=usage.used, bytes_available=usage.available,
                           inodes_total=inodes_total, inodes_used=inodes_used,
                           inodes_available=inodes_free, abnormal=usage.abnormal, message=usage.message)

    def node_expand(self, volume_id: str, volume_path: Path, required_bytes: int) -> int:
        """Raise the limit here when the controller could not (expand_on_node); else the
        limit is already raised and this only reports it."""
        key, name = split_id(volume_id)
        root = self._node_root(key)
        current = root.get_volume(name).size
        if required_bytes > current:
            return root.expand_volume(name, required_bytes).size
        return current


def _same_dir(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
