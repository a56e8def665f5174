"""The contract between the CSI servicers and whatever actually holds the volumes.

The servicers (identity, controller, node) are translators: they decode and validate a CSI
request, call ONE method of a :class:`VolumeBackend`, and encode the answer. Everything a
backend receives has already been validated (ids non-empty, capability well formed, capacity
range sane, paths inside the allowed roots); everything it returns is plain data.

Two implementations exist:

* ``statehold.csi.backend_local.LocalBackend`` -- thin volumes of the node's engine pools
  (volume ids ``"<pool>/<name>"``, snapshot ids ``"<pool>/<snapname>"``).
* ``statehold.csi.backend_shared.SharedBackend`` -- directories on a shared filesystem,
  written by the shared-storage area. The router sends it every request whose
  StorageClass parameter ``type`` is ``shared`` and every volume/snapshot id that starts
  with ``shared/``. Its ids MUST start with ``shared/`` so later calls route back to it.
  It is constructed as ``SharedBackend(config: BackendConfig)``.

Contract every implementation keeps (the CSI spec's rules, restated for backends):

Errors
    Raise only the ``statehold.errors`` tree; the servicers map it to gRPC codes in one
    place (``statehold.csi.status``): NotFound -> NOT_FOUND, AlreadyExists -> ALREADY_EXISTS,
    InvalidArgument -> INVALID_ARGUMENT, OutOfRange -> OUT_OF_RANGE, OutOfCapacity ->
    RESOURCE_EXHAUSTED, FailedPrecondition -> FAILED_PRECONDITION, Aborted -> ABORTED,
    Unavailable/Temporary -> UNAVAILABLE, anything else -> INTERNAL.

Idempotency
    Every method may be called again with the same arguments after a success, a failure or
    a crash, and must then succeed with the same answer (create returns the existing
    object when its spec matches; stage/publish at the same path with the same options is
    a no-op). Deletes and unstage/unpublish of something already gone raise ``NotFound``
    only when the *volume* is unknown; the servicer turns NotFound from ``delete_volume`` /
    ``delete_snapshot`` into success, as the spec wants.

Concurrency
    The servicers hold a per-volume lock around each call (a second call on the same
    volume id while one is in flight gets ABORTED before reaching the backend), so a
    backend never sees two concurrent calls for one volume. Calls for different volumes
    may arrive concurrently from gRPC worker threads.

Sizes
    ``capacity_bytes`` fields are the real size in bytes. ``create_volume`` must honour
    ``required_bytes <= size <= limit_bytes`` (limit 0 = no limit) after its own rounding,
    raising OutOfRange when it cannot.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

TOPOLOGY_KEY = "topology.statehold.io/node"
"""Topology segment key: a local volume is reachable only from the node that holds it."""

SHARED_PREFIX = "shared/"
"""Volume and snapshot ids with this prefix belong to the shared backend."""


class AccessMode(enum.StrEnum):
    """The CSI access modes, by their spec names (servicers convert the proto enum)."""

    SINGLE_NODE_WRITER = "SINGLE_NODE_WRITER"
    SINGLE_NODE_READER_ONLY = "SINGLE_NODE_READER_ONLY"
    MULTI_NODE_READER_ONLY = "MULTI_NODE_READER_ONLY"
    MULTI_NODE_SINGLE_WRITER = "MULTI_NODE_SINGLE_WRITER"
    MULTI_NODE_MULTI_WRITER = "MULTI_NODE_MULTI_WRITER"
    SINGLE_NODE_SINGLE_WRITER = "SINGLE_NODE_SINGLE_WRITER"
    SINGLE_NODE_MULTI_WRITER = "SINGLE_NODE_MULTI_WRITER"


SINGLE_NODE_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
ALL_MODES = frozenset(AccessMode)


@dataclass(frozen=True, slots=True)
class Capability:
    """One decoded VolumeCapability: block or mount (with fs type and flags), one mode."""

    mode: AccessMode
    block: bool
    fs_type: str = ""                       # "" = unspecified (mount only)
    mount_flags: tuple[str, ...] = ()       # mount only
    volume_mount_group: str = ""


@dataclass(frozen=True, slots=True)
class ContentSource:
    """Where a new volume's data comes from: ``kind`` is "snapshot" or "volume"."""

    kind: str
    id: str


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What every backend is built from (read once by the CSI process entry point)."""

    home: Path                              # Statehold home: pools, registries
    node_id: str                            # this node's CSI node id (topology value)
    allowed_roots: tuple[Path, ...] = (Path("/var/lib/kubelet"),)
    expand_on_node: bool = False
    """A controller-only process (the cluster's central csi-resizer) holds no pools: for a
    volume it cannot see it answers ControllerExpandVolume with node_expansion_required and
    leaves the growth to NodeExpandVolume on the node that holds the volume."""


@dataclass(frozen=True, slots=True)
class VolumeRequest:
    """A validated CreateVolume."""

    name: str                               # the CO's name: the idempotency key
    required_bytes: int                     # 0 = unset
    limit_bytes: int                        # 0 = unset
    capabilities: tuple[Capability, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    source: ContentSource | None = None
    requisite: tuple[Mapping[str, str], ...] = ()   # topology segments, [] = anywhere
    preferred: tuple[Mapping[str, str], ...] = ()

    @property
    def block(self) -> bool:
        return any(c.block for c in self.capabilities)

    @property
    def fs_type(self) -> str:
        """The fs type asked for by a capability ("" when none names one)."""
        return next((c.fs_type for c in self.capabilities if c.fs_type), "")


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """What the CO learns about a volume (CSI ``Volume`` + status)."""

    volume_id: str
    capacity_bytes: int
    block: bool
    fs_type: str = ""                         # "" for block volumes
    context: Mapping[str, str] = field(default_factory=dict)
    source: ContentSource | None = None
    topology: tuple[Mapping[str, str], ...] = ()  # accessible_topology; () = everywhere
    abnormal: bool = False                    # volume condition
    message: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    snapshot_id: str
    source_volume_id: str
    size_bytes: int
    created_at: float                         # seconds since the epoch
    ready: bool = True


@dataclass(frozen=True, slots=True)
class CapacityInfo:
    available: int                            # bytes a new volume may still take
    maximum_volume_size: int | None = None
    minimum_volume_size: int | None = None


@dataclass(frozen=True, slots=True)
class ExpandInfo:
    capacity_bytes: int
    node_expansion_required: bool


@dataclass(frozen=True, slots=True)
class StageRequest:
    volume_id: str
    staging_path: Path
    capability: Capability
    context: Mapping[str, str] = field(default_factory=dict)
    publish_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishRequest:
    volume_id: str
    target_path: Path
    staging_path: Path | None                 # None when the backend does not stage
    capability: Capability
    readonly: bool
    context: Mapping[str, str] = field(default_factory=dict)
    publish_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VolumeStats:
    """NodeGetVolumeStats: bytes always; inodes when the volume is a filesystem."""

    bytes_total: int
    bytes_used: int
    bytes_available: int
    inodes_total: int | None = None
    inodes_used: int | None = None
    inodes_available: int | None = None
    abnormal: bool = False
    message: str = ""


@runtime_checkable
class VolumeBackend(Protocol):
    """One kind of volume (local engine volumes, shared directories)."""

    kind: str
    """"local" or "shared"; appears in volume_context["statehold.io/type"]."""

    access_modes: frozenset[AccessMode]
    """Modes this backend can serve; others are refused with INVALID_ARGUMENT."""

    supports_block: bool
    """Whether block-mode capabilities can be served."""

    needs_staging: bool
    """True if NodeStageVolume does the real work (local); False if it is a no-op."""

    # ---- controller side -------------------------------------------------------------
    def create_volume(self, req: VolumeRequest) -> VolumeInfo:
        """Create (or return the existing, identical) volume named ``req.name``.

        AlreadyExists if the name exists with an incompatible size/mode/fs/source;
        NotFound if the content source does not exist; OutOfRange if the capacity range
        cannot be met; OutOfCapacity if there is no room; InvalidArgument for a bad
        parameter or a source that cannot be used (e.g. another pool)."""
        ...

    def delete_volume(self, volume_id: str) -> None:
        """Delete; NotFound if it does not exist; FailedPrecondition while in use."""
        ...

    def get_volume(self, volume_id: str) -> VolumeInfo:
        """NotFound if unknown. Fills the volume condition (abnormal + message)."""
        ...

    def list_volumes(self) -> Sequence[VolumeInfo]:
        """Every volume, sorted by volume_id (pagination relies on a stable order)."""
        ...

    def capacity(
        self, parameters: Mapping[str, str], segment: Mapping[str, str] | None
    ) -> CapacityInfo:
        """Room for new volumes with these parameters in this topology segment (None =
        anywhere). A segment this backend cannot serve has ``available == 0``."""
        ...

    def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> ExpandInfo:
        """Grow to at least ``required_bytes`` (never shrink: a smaller size is a no-op
        returning the current size). OutOfRange if the limit cannot be met,
        OutOfCapacity if no room, NotFound if unknown."""
        ...

    def create_snapshot(
        self, source_volume_id: str, name: str, parameters: Mapping[str, str]
    ) -> SnapshotInfo:
        """Idempotent for the same source; AlreadyExists if ``name`` is a snapshot of
        another volume; NotFound if the source volume does not exist."""
        ...

    def delete_snapshot(self, snapshot_id: str) -> None:
        """NotFound if it does not exist."""
        ...

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """NotFound if unknown."""
        ...

    def list_snapshots(self, source_volume_id: str | None = None) -> Sequence[SnapshotInfo]:
        """Sorted by snapshot_id; only those of ``source_volume_id`` when given (an
        unknown source gives an empty list, not NotFound)."""
        ...

    # ---- node side -------------------------------------------------------------------
    def node_protected(self) -> Sequence[Path]:
        """Paths holding this backend's own files (its home, pools, shared roots): a staging
        or target path inside or above one is INVALID_ARGUMENT, before any backend call."""
        ...

    def node_stage(self, req: StageRequest) -> None:
        """Make the volume usable on this node at ``req.staging_path`` (filesystem: attach,
        format if blank, mount; block: attach). Idempotent at the same path with the same
        capability; AlreadyExists if staged there with an incompatible capability;
        NotFound if the volume is unknown."""
        ...

    def node_unstage(self, volume_id: str, staging_path: Path) -> None:
        """Undo node_stage; a no-op if not staged. NotFound if the volume is unknown."""
        ...

    def node_publish(self, req: PublishRequest) -> None:
        """Bind the staged volume (or device) onto ``req.target_path``, creating the target
        directory (mount) or file (block). Idempotent; AlreadyExists if published there
        with other options (e.g. readonly differs); FailedPrecondition if not staged or
        the access mode forbids another publication."""
        ...

    def node_unpublish(self, volume_id: str, target_path: Path) -> None:
        """Unmount the volume's own mounts at ``target_path`` and remove the file or
        directory the driver created there; a no-op if not published there.
        FailedPrecondition, touching nothing, for a mount or a file that is not the
        volume's (docs/csi.md, *What the node service touches*)."""
        ...

    def node_stats(self, volume_id: str, volume_path: Path) -> VolumeStats:
        """Usage of the volume published/staged at ``volume_path``. NotFound if the volume
        is unknown or not mounted at that path."""
        ...

    def node_expand(self, volume_id: str, volume_path: Path, required_bytes: int) -> int:
        """Grow the filesystem on this node to the device size; returns capacity_bytes."""
        ...
