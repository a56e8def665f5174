"""Value types of the node storage engine, shared by every adapter.

Frozen dataclasses: adapters (CSI, CLI, operator, backup) read them and never mutate them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB


class VolumeMode(enum.StrEnum):
    FILESYSTEM = "filesystem"
    BLOCK = "block"


class FsType(enum.StrEnum):
    EXT4 = "ext4"
    XFS = "xfs"
    BTRFS = "btrfs"


class RaidProfile(enum.StrEnum):
    SINGLE = "single"
    RAID0 = "raid0"
    RAID1 = "raid1"
    RAID10 = "raid10"


class PoolLayout(enum.StrEnum):
    """Where a pool keeps volumes (engine/layouts.py); fixed when the pool is made."""

    FILE = "file"            # a reflinked sparse file per volume (every pool's, by default)
    SUBVOLUME = "subvolume"  # btrfs only: a subvolume per volume, O(1) snapshots and clones


class SourceKind(enum.StrEnum):
    SNAPSHOT = "snapshot"
    VOLUME = "volume"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a new volume's content comes from (a clone)."""

    kind: SourceKind
    name: str


class GrowResult(enum.StrEnum):
    """What happened to the filesystem when a volume was expanded."""

    ONLINE = "online"            # grown while mounted
    OFFLINE = "offline"          # not mounted: grown now, offline
    AT_NEXT_MOUNT = "at-next-mount"  # the kernel refused online growth; done at next mount
    NOT_FORMATTED = "not-formatted"  # blank or block volume: only the device grew


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    devices: tuple[str, ...] = ()          # block devices (real disks)
    images: tuple[str, ...] = ()           # file-backed disk images (embedded default, tests)
    image_size: int = 0                    # size of each image to create, bytes
    profile: RaidProfile = RaidProfile.SINGLE
    overprovision_ratio: float = 10.0
    force: bool = False                    # accept devices holding a filesystem/partition table
    directory: str = ""                    # or: an existing directory on a reflink-capable fs
    layout: str = PoolLayout.FILE          # or PoolLayout.SUBVOLUME (btrfs only)


@dataclass(frozen=True, slots=True)
class Capacity:
    total: int            # bytes the pool filesystem can hold
    used: int             # bytes physically allocated in the pool filesystem
    provisioned: int      # sum of volume sizes (thin)
    free: int             # bytes physically free
    overprovision_ratio: float
    allocatable: int      # bytes that may still be provisioned: total*ratio - provisioned, capped by free>0


@dataclass(frozen=True, slots=True)
class Volume:
    pool: str
    name: str
    size: int
    mode: VolumeMode
    fs: FsType | None        # None for block mode
    path: Path               # backing sparse file
    created_at: float
    source: Source | None = None
    device: str | None = None                  # /dev/loopN while attached
    mounts: tuple[str, ...] = ()               # mount targets
    formatted: bool = False
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.pool}/{self.name}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    pool: str
    name: str
    source_volume: str       # name of the volume it was taken from (kept after it is deleted)
    size: int
    path: Path
    created_at: float
    frozen: bool             # taken after fsfreeze
    ready: bool = True
    mode: VolumeMode = VolumeMode.FILESYSTEM  # what it holds, so a clone needs no volume to ask
    fs: FsType | None = None                  # None for block mode (or never formatted)

    @property
    def id(self) -> str:
        return f"{self.pool}/{self.name}"


@dataclass(frozen=True, slots=True)
class ExpandResult:
    volume: Volume
    grow: GrowResult
