"""The CSI backend for ``type: shared``: volumes as directories on a shared filesystem.

A translator over :class:`~statehold.shared.service.SharedVolumes`: it turns CSI requests
into the service's calls (StorageClass parameters into a
:class:`~statehold.shared.parameters.VolumeClass`, capacity ranges into a size) and its
records into CSI answers. Ids are the service's, ``shared/<root key>/<name>`` for volumes
and snapshots alike (:mod:`statehold.shared.ids`). The StorageClass parameters are listed
in :mod:`statehold.shared.parameters`.

Node side: NodeStage mounts the share (native, once per node, counted per volume) and
bind-mounts the volume's directory at the staging path; NodePublish binds the staging path
into the pod (read-only for reader modes or readonly requests). No filesystem is created
or grown: ControllerExpand raises the quota online and NodeExpand has nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from statehold.csi import mounts as node_mounts
from statehold.csi.backend import (
    ALL_MODES,
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
from statehold.csi.mounts import Owned
from statehold.engine import mounts, safepath
from statehold.engine.mounts import Mount, mount_at
from statehold.engine.safepath import Handle
from statehold.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    StateholdError,
    Unavailable,
)
from statehold.shared.ids import split_id
from statehold.shared.names import validate_name
from statehold.shared.parameters import VolumeClass
from statehold.shared.registry import RootSpec
from statehold.shared.service import Origin, SharedVolumes, SnapshotRecord, UnknownRoot, VolumeRecord
from statehold.shared.types import SourceKind, VolumeEvent

log = logging.getLogger("statehold.csi.shared")
DEFAULT_SIZE = 1024**3
READER_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY})


def _info(rec: VolumeRecord) -> VolumeInfo:
    source = None
    if rec.volume.source is not None and rec.source_id is not None:
        source = ContentSource(kind=str(rec.volume.source.kind), id=rec.source_id)
    return VolumeInfo(volume_id=rec.id, capacity_bytes=rec.volume.size, block=False,
                      context=rec.context, source=source, abnormal=rec.usage.abnormal,
                      message=rec.usage.message)


def _snap_info(rec: SnapshotRecord) -> SnapshotInfo:
    snap = rec.snapshot
    created = datetime.fromisoformat(snap.created).timestamp() if snap.created else 0.0
    return SnapshotInfo(snapshot_id=rec.id, source_volume_id=rec.volume_id,
                        size_bytes=snap.size, created_at=created, ready=snap.ready)


def _size(req: VolumeRequest) -> int:
    """The capacity range as one size: required (or the default), within the limit."""
    size = req.required_bytes or DEFAULT_SIZE
    if req.limit_bytes and size > req.limit_bytes:
        size = req.limit_bytes if not req.required_bytes else size
        if size > req.limit_bytes:
            raise OutOfRange(f"required {req.required_bytes} exceeds limit {req.limit_bytes}")
    return size


class SharedBackend:
    kind = "shared"
    access_modes = ALL_MODES
    supports_block = False
    needs_staging = True

    def __init__(self, config: BackendConfig, *,
                 on_event: Callable[[VolumeEvent], None] | None = None,
                 volumes: SharedVolumes | None = None) -> None:
        self.config = config
        self.volumes = volumes if volumes is not None else SharedVolumes(config.home, on_event=on_event)

    # ---- controller ----------------------------------------------------------------------
    def create_volume(self, req: VolumeRequest) -> VolumeInfo:
        if req.block:
            raise InvalidArgument("shared volumes are directories: block mode is not offered")
        validate_name(req.name)
        size = _size(req)
        cls = VolumeClass.from_parameters(req.parameters)
        origin = Origin(SourceKind(req.source.kind), req.source.id) if req.source is not None else None
        return _info(self.volumes.create_volume(req.name, size, cls, origin))

    def delete_volume(self, volume_id: str) -> None:
        try:
            self.volumes.delete_volume(volume_id)
        except UnknownRoot as exc:
            # Not "already gone": every node's provisioner may be asked to delete a shared
            # PV, and answering OK where the root is unknown would drop the PV and leave
            # the directory behind. Retryable, so a node that knows the root deletes it.
            raise Unavailable(f"{exc}; cannot delete {volume_id} here") from exc

    def get_volume(self, volume_id: str) -> VolumeInfo:
        return _info(self.volumes.get_volume(volume_id))

    def list_volumes(self) -> Sequence[VolumeInfo]:
        return [_info(rec) for rec in self.volumes.list_volumes()]

    def capacity(self, parameters: Mapping[str, str], segment: Mapping[str, str] | None) -> CapacityInfo:
        return CapacityInfo(available=self.volumes.available_bytes(RootSpec.from_parameters(parameters)))

    def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> ExpandInfo:
        split_id(volume_id)
        if limit_bytes and required_bytes > limit_bytes:
            raise OutOfRange(f"required {required_bytes} exceeds limit {limit_bytes}")
        try:
            vol = self.volumes.expand_volume(volume_id, required_bytes)
        except UnknownRoot:
            if not self.config.expand_on_node:
                raise
            # the central resizer's process sees no shares: the node raises the limit
            return ExpandInfo(capacity_bytes=required_bytes, node_expansion_required=True)
        return ExpandInfo(capacity_bytes=vol.size, node_expansion_required=False)

    # ---- snapshots -----------------------------------------------------------------------
    def create_snapshot(self, source_volume_id: str, name: str,
                        parameters: Mapping[str, str]) -> SnapshotInfo:
        return _snap_info(self.volumes.create_snapshot(source_volume_id, name))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.volumes.delete_snapshot(snapshot_id)

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return _snap_info(self.volumes.get_snapshot(snapshot_id))

    def list_snapshots(self, source_volume_id: str | None = None) -> Sequence[SnapshotInfo]:
        return [_snap_info(rec) for rec in self.volumes.list_snapshots(source_volume_id)]

    # ---- node ----------------------------------------------------------------------------
    def node_protected(self) -> list[Path]:
        """The home (native shares are mounted under it) and every host-style root's
        directory: never a staging or target path (a bind there would hide volumes)."""
        paths = [self.config.home, Path(self.volumes.home)]
        for key in self.volumes.known():
            with contextlib.suppress(StateholdError):
                spec = self.volumes.spec(key)
                if spec.path is not None:
                    paths.append(spec.path)
        return paths

    def _owned(self, volume_id: str) -> Owned:
        """A mount is this volume's when it shows the volume's directory (same inode), as
        this node has it now; with the share not mounted here nothing can be."""
        key, name = split_id(volume_id)
        ident: tuple[int, int] | None = None
        with contextlib.suppress(StateholdError, OSError):
            st = os.stat(self.volumes.node_root(key).get_volume(name).path)
            ident = (st.st_dev, st.st_ino)

        def test(handle: Handle, entry: Mount) -> bool:
            st = handle.stat()
            return ident is not None and stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == ident

        return test

    def node_stage(self, req: StageRequest) -> None:
        if req.capability.block:
            raise InvalidArgument("shared volumes are directories: block mode is not offered")
        _key, name = split_id(req.volume_id)
        spec = self.volumes.learn(req.volume_id, req.context)
        root = self.volumes.open(spec, user=req.volume_id)
        staged = False
        try:
            vol = root.get_volume(name)
            roots = self.config.allowed_roots
            with safepath.open_trusted(vol.path, directory=True) as source, \
                    node_mounts.target(req.staging_path, roots) as (parent, leaf, current):
                if not mounts.bound_at(source, current, parent, readonly=None):
                    node_mounts.bind_onto(source, parent, leaf, current, req.volume_id, readonly=False)
            staged = True
        finally:
            if not staged and spec.share is not None and mount_at(req.staging_path) is None:
                self.volumes.release(spec, req.volume_id)

    def node_unstage(self, volume_id: str, staging_path: Path) -> None:
        key, _name = split_id(volume_id)
        spec = self.volumes.spec(key)
        located = safepath.locate(staging_path, self.config.allowed_roots)
        parent = safepath.open_parent(located)
        if parent is not None:
            with parent:
                node_mounts.peel(parent, located.name, self._owned(volume_id), volume_id)
                safepath.remove_created(parent, located.name, volume_id)
        self.volumes.release(spec, volume_id)

    def node_publish(self, req: PublishRequest) -> None:
        split_id(req.volume_id)
        if req.staging_path is None:
            raise FailedPrecondition(f"volume {req.volume_id} is not staged on this node")
        readonly = req.readonly or req.capability.mode in READER_MODES
        roots = self.config.allowed_roots
        owned = self._owned(req.volume_id)
        with safepath.opened(safepath.locate(req.staging_path, roots)) as (sparent, staged):
            entry = None
            if sparent is not None and staged is not None and safepath.is_mountpoint(sparent, staged):
                entry = mounts.entry_of(staged)
            if staged is None or entry is None or not owned(staged, entry):
                raise FailedPrecondition(f"volume {req.volume_id} is not staged at {req.staging_path}")
            with node_mounts.target(req.target_path, roots) as (parent, leaf, current):
                if mounts.bound_at(staged, current, parent, readonly=readonly):
                    return
                node_mounts.bind_onto(staged, parent, leaf, current, req.volume_id, readonly=readonly)

    def node_unpublish(self, volume_id: str, target_path: Path) -> None:
        split_id(volume_id)
        node_mounts.unpublish(target_path, self.config.allowed_roots, volume_id, self._owned(volume_id))

    def node_stats(self, volume_id: str, volume_path: Path) -> VolumeStats:
        split_id(volume_id)
        if mount_at(volume_path) is None:
            raise NotFound(f"volume {volume_id} is not mounted at {volume_path}")
        usage = self.volumes.usage(volume_id, mount=False)
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
        return self.volumes.expand_volume(volume_id, required_bytes, mount=False).size

