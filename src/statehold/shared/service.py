"""The shared volumes one host knows: the service every adapter of shared mode calls.

A :class:`SharedVolumes` is built from the Statehold home and holds what makes a host's
view of shared mode: the root registry (``<home>/shared/roots``, which root each id's key
names) and the native share mounts (``<home>/shared/shares``, one mount per share, counted
per user). Both live in files and in the kernel's mount table, not in the object, so every
process built from the same home -- the CSI plugin and the operator's node agent on one
node -- sees the same roots and the same mounts.

Volumes and snapshots are named by ids ``shared/<root key>/<name>``
(:mod:`statehold.shared.ids`). The CSI backend (``statehold.csi.backend_shared``) turns CSI
requests into these calls and the records they return into CSI answers; the operator backs
volumes up and restores them through it; the CLI's monitor asks it for over-size volumes.

Errors: the ``statehold.errors`` tree. An id whose root this host has never recorded is
:class:`UnknownRoot` (a NotFound), distinct from a volume missing on a known root, because
callers answer the two differently (another node may know the root).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository
from statehold.engine.mounts import mount_at
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from statehold.shared.backups import backup_volume, restore_volume
from statehold.shared.ids import make_id, split_id
from statehold.shared.parameters import VolumeClass
from statehold.shared.registry import NATIVE, RootRegistry, RootSpec
from statehold.shared.root import EventHook, SharedRoot
from statehold.shared.share import ShareMounter
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import SharedSnapshot, SharedVolume, Source, SourceKind, Usage, VolumeEvent

CONTROLLER_USER = "controller"
"""The mount user of every call that is not a node stage: a native share the controller
side mounted stays mounted (one reference, whatever the number of calls)."""

ROOT_ATTRIBUTES = ("sharedRoot", "source", "server")
"""Volume-context keys of which one describes a root (the rest complete a description)."""


class UnknownRoot(NotFound):
    """The id names a root this host has not recorded: no volume of it was created, staged,
    backed up or registered here."""


class UnknownCapacity(FailedPrecondition):
    """The root's filesystem reports no size (statfs: 0 blocks, as smbnetfs does): its free
    space is unknown, which is not the same as none."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a new volume's content comes from: a volume or snapshot (by id) on its root."""

    kind: SourceKind
    id: str


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """A volume as this host sees it: its id, its root, its record and how full it is."""

    id: str
    key: str
    root: RootSpec
    volume: SharedVolume
    usage: Usage

    @property
    def source_id(self) -> str | None:
        """The id of the volume, snapshot or backup the volume was made from."""
        source = self.volume.source
        return make_id(self.key, source.name) if source is not None else None

    @property
    def context(self) -> dict[str, str]:
        """What any node needs to reach the volume (the CSI volume context, kept in the PV's
        ``volumeAttributes``): the root's description besides the key and the name."""
        return {"statehold.io/type": "shared", "rootKey": self.key, "name": self.volume.name,
                **self.root.to_context()}


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    id: str
    volume_id: str
    snapshot: SharedSnapshot


class SharedVolumes:
    """Shared volumes on every root this host knows. Cheap to build; holds no handles."""

    def __init__(self, home: Path, *, on_event: EventHook | None = None) -> None:
        self.home = home
        self.registry = RootRegistry(home)
        self.mounter = ShareMounter(home / "shared")
        self.on_event = on_event

    # ---- roots ---------------------------------------------------------------------------
    def spec(self, key: str) -> RootSpec:
        """The recorded description of root ``key``; UnknownRoot when there is none."""
        try:
            return self.registry.lookup(key)
        except NotFound as exc:
            raise UnknownRoot(str(exc)) from exc

    def remember(self, spec: RootSpec) -> str:
        """Record a root in this host's registry; its key."""
        return self.registry.remember(spec)

    def known(self) -> list[str]:
        return self.registry.known()

    def open(self, spec: RootSpec, *, user: str = CONTROLLER_USER) -> SharedRoot:
        """The root on this host; mounts a native share (counted as ``user``) if needed."""
        if spec.style == NATIVE:
            assert spec.share is not None
            path = self.mounter.acquire(spec.share, user)
        else:
            assert spec.path is not None
            path = spec.path
        return SharedRoot(path, on_event=self.on_event)

    def root_for(self, key: str) -> SharedRoot:
        """The root of a registered key, as this host sees it (mounted if needed)."""
        return self.open(self.spec(key))

    def node_root(self, key: str) -> SharedRoot:
        """The root as this node sees it, without taking a new mount reference: NotFound
        when a native share is not mounted here (no volume of it is staged)."""
        spec = self.spec(key)
        if spec.style == NATIVE:
            assert spec.share is not None
            target = self.mounter.target(spec.share)
            if mount_at(target) is None:
                raise NotFound(f"shared root {key} is not mounted on this node")
            return SharedRoot(target, on_event=self.on_event)
        return self.open(spec)

    def learn(self, volume_id: str, context: Mapping[str, str]) -> RootSpec:
        """The root of a volume about to be used on this node, recorded here: from the
        volume context when it describes one (how a node learns a root another node
        created), else from the registry. InvalidArgument when the context describes
        another root than the id names."""
        key, _name = split_id(volume_id)
        described = any(context.get(k) for k in ROOT_ATTRIBUTES)
        spec = RootSpec.from_parameters(context) if described else self.spec(key)
        if spec.key != key:
            raise InvalidArgument(f"volume context describes root {spec.key}, the id names {key}")
        self.registry.remember(spec)
        return spec

    def release(self, spec: RootSpec, user: str) -> None:
        """Drop ``user``'s reference on a native share (unmounted when it was the last)."""
        if spec.share is not None:
            self.mounter.release(spec.share, user)

    # ---- volumes -------------------------------------------------------------------------
    def _record(self, key: str, root: SharedRoot, name: str, spec: RootSpec | None = None) -> VolumeRecord:
        vol = root.get_volume(name)
        usage = root.usage(name)
        return VolumeRecord(id=make_id(key, name), key=key, root=spec or self.spec(key),
                            volume=vol, usage=usage)

    def create_volume(self, name: str, size: int, cls: VolumeClass,
                      origin: Origin | None = None) -> VolumeRecord:
        """Create (or find, same spec) volume ``name`` on the class's root, recording the
        root. A clone's origin must be on the same root (InvalidArgument)."""
        root = self.open(cls.root)
        key = self.registry.remember(cls.root)
        source = None
        if origin is not None:
            src_key, src_name = split_id(origin.id)
            if src_key != key:
                raise InvalidArgument("a shared volume can only be cloned from the same shared root")
            source = Source(origin.kind, src_name)
        root.create_volume(name, size, policy=cls.policy, enforce=cls.enforce, source=source)
        return self._record(key, root, name, cls.root)

    def delete_volume(self, volume_id: str) -> Path | None:
        """Apply the volume's deletion policy (also finishing a crashed create or delete);
        where the data went, if kept. NotFound when nothing of the name is recorded;
        UnknownRoot when this host does not know the root."""
        key, name = split_id(volume_id)
        root = self.open(self.spec(key))
        if not root.exists(name):
            raise NotFound(f"volume {volume_id} does not exist")
        return root.delete_volume(name)

    def get_volume(self, volume_id: str) -> VolumeRecord:
        key, name = split_id(volume_id)
        return self._record(key, self.root_for(key), name)

    def list_volumes(self) -> list[VolumeRecord]:
        """Every volume of every known root, sorted by id."""
        out: list[VolumeRecord] = []
        for key in self.registry.known():
            root = self.root_for(key)
            out.extend(self._record(key, root, v.name) for v in root.list_volumes())
        return sorted(out, key=lambda r: r.id)

    def available_bytes(self, spec: RootSpec) -> int:
        """Free bytes on the root's filesystem (what a new volume may still take).

        UnknownCapacity where the filesystem reports no size at all (SMB through smbnetfs:
        0 blocks): answering 0 there would say "full" about a share with room."""
        root = self.open(spec)
        if not root.traits.reports_size:
            raise UnknownCapacity(
                f"the filesystem of shared root {root.path} ({root.traits.fstype or 'unknown type'}) "
                "reports no size, so its free space is unknown; use Immediate volume binding "
                "for this StorageClass (capacity is only consulted for WaitForFirstConsumer)")
        try:
            st = os.statvfs(root.path)
        except OSError as exc:
            raise Unavailable(f"cannot statfs {root.path}: {exc}") from exc
        return st.f_bavail * st.f_frsize

    def expand_volume(self, volume_id: str, size: int, *, mount: bool = True) -> SharedVolume:
        """Raise the limit to at least ``size``, online; never shrinks. ``mount=False`` uses
        the root only as this node already has it (see :meth:`node_root`)."""
        key, name = split_id(volume_id)
        root = self.root_for(key) if mount else self.node_root(key)
        current = root.get_volume(name)
        if size <= current.size:
            return current
        return root.expand_volume(name, size)

    def usage(self, volume_id: str, *, mount: bool = True) -> Usage:
        """How full the volume is (an over-size one fires the event hook)."""
        key, name = split_id(volume_id)
        root = self.root_for(key) if mount else self.node_root(key)
        return root.usage(name)

    def oversize(self) -> Iterator[tuple[str, VolumeEvent]]:
        """Measure every volume of every known root, root by root: (volume id, OverSize
        event) for each one holding more than its size."""
        for key in self.registry.known():
            for event in self.root_for(key).check_all():
                yield make_id(key, event.volume), event

    # ---- snapshots -----------------------------------------------------------------------
    @staticmethod
    def _snap(key: str, snap: SharedSnapshot) -> SnapshotRecord:
        return SnapshotRecord(id=make_id(key, snap.name), volume_id=make_id(key, snap.volume),
                              snapshot=snap)

    def create_snapshot(self, volume_id: str, name: str) -> SnapshotRecord:
        """Snapshot the volume as ``name``; the same pair again returns the existing one."""
        key, volume = split_id(volume_id)
        return self._snap(key, SnapshotStore(self.root_for(key)).create(volume, name))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """NotFound when there is no such (ready) snapshot."""
        key, name = split_id(snapshot_id)
        store = SnapshotStore(self.root_for(key))
        store.get(name)
        store.delete(name)

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        key, name = split_id(snapshot_id)
        return self._snap(key, SnapshotStore(self.root_for(key)).get(name))

    def list_snapshots(self, volume_id: str | None = None) -> list[SnapshotRecord]:
        """Sorted by id; only those of ``volume_id`` when given."""
        want = split_id(volume_id) if volume_id else None
        out: list[SnapshotRecord] = []
        for key in self.registry.known():
            if want is not None and want[0] != key:
                continue
            store = SnapshotStore(self.root_for(key))
            out.extend(self._snap(key, s) for s in store.list(want[1] if want else None))
        return sorted(out, key=lambda r: r.id)

    # ---- backups -------------------------------------------------------------------------
    def backup(self, volume_id: str, repo: Repository, *, snapshot: bool = True,
               labels: Mapping[str, str] | None = None, origin: str = "") -> Manifest:
        """A file-tree backup of the volume, listed under its volume id; ``labels`` (the
        PVC, namespace and VolumeBackup, as block backups record them) and ``origin`` (who
        asked: a schedule prunes only its own) go into its manifest."""
        key, name = split_id(volume_id)
        return backup_volume(repo, self.root_for(key), name, volume_key=volume_id,
                             snapshot=snapshot, labels=labels, origin=origin)

    def restore(self, backup_id: str, repo: Repository, name: str, cls: VolumeClass,
                size: int | None = None) -> VolumeRecord:
        """A new volume ``name`` on the class's root holding the backup (idempotent)."""
        root = self.open(cls.root)
        key = self.registry.remember(cls.root)
        restore_volume(repo, backup_id, root, name, size=size, policy=cls.policy, enforce=cls.enforce)
        return self._record(key, root, name, cls.root)
