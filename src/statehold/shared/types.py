"""Value types of the shared-storage mode. Frozen: adapters read them, never mutate them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class DeletionPolicy(enum.StrEnum):
    """What DeleteVolume does with a volume's directory (per StorageClass)."""

    DELETE = "delete"    # remove the directory and its content
    RETAIN = "retain"    # leave the directory where it is; the volume is gone for the CO
    ARCHIVE = "archive"  # move it to ``.statehold/archive/<name>-<UTC timestamp>``


class VolumeState(enum.StrEnum):
    CREATING = "creating"   # intent recorded, directory may be partial: finished or undone
    READY = "ready"
    DELETING = "deleting"   # intent recorded: finished on the next delete or reconcile
    RETAINED = "retained"   # deleted with policy retain: data kept, name still held


class QuotaKind(enum.StrEnum):
    """How a root enforces sizes."""

    XFS_PROJECT = "xfs-project"    # XFS project quota: writes past the limit get EDQUOT
    BTRFS_QGROUP = "btrfs-qgroup"  # each volume a subvolume with a qgroup limit: EDQUOT
    ACCOUNTING = "accounting"      # nothing stops writes; usage is measured and reported


class CopyMethod(enum.StrEnum):
    """How a snapshot or clone was copied (reported to the user: it decides its cost)."""

    REFLINK = "reflink"              # cp --reflink=always: shared extents, copy on write
    SUBVOLUME = "subvolume-snapshot"  # btrfs subvolume snapshot: O(1), copy on write
    COPY = "copy"                    # plain byte copy: costs the data's size


class SourceKind(enum.StrEnum):
    SNAPSHOT = "snapshot"
    VOLUME = "volume"
    BACKUP = "backup"     # restored from a file-tree backup (name = backup id)


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    name: str


@dataclass(frozen=True, slots=True)
class SharedVolume:
    name: str
    path: Path
    size: int                  # the limit, bytes
    policy: DeletionPolicy
    state: VolumeState
    quota: QuotaKind
    project_id: int | None = None     # XFS project id when quota is xfs-project
    source: Source | None = None
    copy_method: CopyMethod | None = None  # set for clones
    created: str = ""                 # ISO 8601 UTC


@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    name: str
    volume: str
    path: Path
    size: int                  # the source volume's size at snapshot time
    copy_method: CopyMethod
    created: str = ""
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Usage:
    """How full a volume is. ``abnormal`` when it holds more than its size (accounting)."""

    used: int
    size: int
    inodes: int

    @property
    def available(self) -> int:
        return max(0, self.size - self.used)

    @property
    def abnormal(self) -> bool:
        return self.used > self.size

    @property
    def message(self) -> str:
        if self.abnormal:
            return f"volume holds {self.used} bytes, more than its size {self.size}"
        return "volume is within its size"


@dataclass(frozen=True, slots=True)
class VolumeEvent:
    """Something a user should hear about; adapters turn it into a Kubernetes Event."""

    volume: str
    reason: str        # e.g. "OverSize"
    message: str
    warning: bool = True
