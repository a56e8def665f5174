"""Size enforcement: which mechanism a shared root offers, chosen by probing its mount.

An :class:`Enforcer` owns what differs between mechanisms: how a volume directory is made
and removed (a btrfs qgroup needs a subvolume), how its limit is set and raised, how its
usage is read, and whether the filesystem has an O(1) snapshot of its own.

* ``xfs-project``: XFS mounted with ``prjquota``/``pquota``. Each volume directory gets a
  project id (inherited by everything created under it) and a hard block limit.
* ``btrfs-qgroup``: btrfs with quotas enabled. Each volume is a subvolume with a
  referenced-bytes limit; snapshots and clones are subvolume snapshots.
* ``accounting``: anything else (GlusterFS, NFS, CephFS through FUSE, a plain directory).
  Writes are not stopped; usage is measured by walking the tree and an over-size volume
  is reported as abnormal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from statehold.engine.mounts import Mount
from statehold.errors import Unavailable
from statehold.shared.copying import remove_tree
from statehold.shared.mountinfo import mount_of, read_mounts
from statehold.shared.types import CopyMethod, QuotaKind
from statehold.shared.usage import TreeUsage, tree_usage

XFS_QUOTA_OPTIONS = frozenset({"prjquota", "pquota"})  # pqnoenforce accounts, never refuses


class Enforcer(Protocol):
    """Contract: every method is idempotent (safe to repeat after a crash)."""

    kind: QuotaKind
    enforcing: bool

    def make_dir(self, path: Path) -> None:
        """Create the (empty) volume directory; present already is fine."""
        ...

    def remove_dir(self, path: Path) -> None:
        """Remove the volume directory and its content; absent is fine."""
        ...

    def assign(self, path: Path, project_id: int | None) -> None:
        """Make the new volume directory (and anything already in it, for clones) one unit
        of accounting. Called once, at create."""
        ...

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        """Set (or raise, online) the limit of the volume at ``path`` to ``size`` bytes."""
        ...

    def release(self, path: Path, project_id: int | None) -> None:
        """Drop the limit (the directory is leaving the set of volumes)."""
        ...

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        ...

    def snapshot(self, src: Path, dst: Path, *, readonly: bool) -> CopyMethod | None:
        """A filesystem-native copy of ``src`` at ``dst``, or None to use a tree copy."""
        ...


class Accounting:
    """No enforcement: plain directories, usage by walking the tree."""

    kind = QuotaKind.ACCOUNTING
    enforcing = False

    def make_dir(self, path: Path) -> None:
        try:
            path.mkdir(mode=0o777, exist_ok=True)
            os.chmod(path, 0o777)  # pods run as arbitrary uids; the share decides access
        except OSError as exc:
            raise Unavailable(f"cannot create {path}: {exc}") from exc

    def remove_dir(self, path: Path) -> None:
        remove_tree(path)

    def assign(self, path: Path, project_id: int | None) -> None:
        return None

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        return None

    def release(self, path: Path, project_id: int | None) -> None:
        return None

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        return tree_usage(path)

    def snapshot(self, src: Path, dst: Path, *, readonly: bool) -> CopyMethod | None:
        return None


def detect(root: Path, mounts: list[Mount] | None = None) -> Enforcer:
    """The strongest enforcement the filesystem holding ``root`` offers."""
    # Imported here: both modules import Accounting from this one.
    from statehold.shared.btrfs_qgroup import BtrfsQgroup, qgroups_enabled
    from statehold.shared.xfs_project import XfsProject

    entry = mount_of(read_mounts() if mounts is None else mounts, root.resolve())
    if entry is None:
        return Accounting()
    if entry.fstype == "xfs" and entry.all_options & XFS_QUOTA_OPTIONS:
        return XfsProject(Path(entry.target))
    if entry.fstype == "btrfs" and qgroups_enabled(root):
        return BtrfsQgroup()
    return Accounting()
