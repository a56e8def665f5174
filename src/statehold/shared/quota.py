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

from pathlib import Path

from statehold.engine.mounts import Mount, mount_of
from statehold.shared.accounting import Accounting, Enforcer
from statehold.shared.btrfs_qgroup import BtrfsQgroup, qgroups_enabled
from statehold.shared.xfs_project import XfsProject

__all__ = ["XFS_QUOTA_OPTIONS", "Accounting", "Enforcer", "detect"]

XFS_QUOTA_OPTIONS = frozenset({"prjquota", "pquota"})  # pqnoenforce accounts, never refuses


def detect(root: Path, mounts: list[Mount] | None = None) -> Enforcer:
    """The strongest enforcement the filesystem holding ``root`` offers."""
    entry = mount_of(root.resolve(), mounts)
    if entry is None:
        return Accounting()
    if entry.fstype == "xfs" and entry.all_options & XFS_QUOTA_OPTIONS:
        return XfsProject(Path(entry.target))
    if entry.fstype == "btrfs" and qgroups_enabled(root):
        return BtrfsQgroup()
    return Accounting()
