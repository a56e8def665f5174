"""Backups of shared volumes through the backup engine's file-tree mode (manifest kind
``tree``, docs/design/backup-format.md §6.3), and restores into new shared volumes.

A backup reads a snapshot, not the live directory: pods may keep writing while it runs
and each file is read as it was at the snapshot (consistent per file; shared filesystems
cannot be frozen). The snapshot is deleted afterwards. On roots whose snapshots are full
copies (GlusterFS, NFS) that costs a copy of the volume; ``snapshot=False`` reads the
live tree instead, for volumes whose writers are stopped or append-only.

Files are cut into the repository's chunks, so content already stored (an earlier backup,
another volume) is not stored again; the parent is the newest tree backup of the same
volume key. A restore builds the tree aside and turns it into a new volume atomically,
with the size limit set afterwards; it fails before creating anything when the backup
holds more bytes than the requested size, or what the root cannot store (see
:func:`unstorable`): files whose names differ only by case on a case-insensitive root
(SMB), symlinks where the filesystem has none (smbnetfs). File modes and owners are set
as recorded; an SMB server maps them to its own, so on SMB they read back as the server's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository
from statehold.backup.tree import backup_tree, restore_tree
from statehold.errors import FailedPrecondition, InvalidArgument, OutOfRange
from statehold.shared.names import case_clashes
from statehold.shared.root import SharedRoot
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import DeletionPolicy, SharedVolume, Source, SourceKind


def latest_tree_backup(repo: Repository, volume_key: str) -> Manifest | None:
    found = [m for m in repo.manifests() if m.volume == volume_key and m.kind == "tree"]
    return max(found, key=lambda m: (m.created, m.backup_id)) if found else None


def backup_volume(repo: Repository, root: SharedRoot, name: str, *, volume_key: str,
                  snapshot: bool = True, labels: Mapping[str, str] | None = None,
                  workers: int = 8, origin: str = "") -> Manifest:
    """Back up volume ``name`` of ``root``, listed in the repository as ``volume_key``
    (the CSI volume id, so backups follow the volume whichever node mounts the share);
    ``origin`` (who asked) goes into the manifest for retention."""
    vol = root.get_volume(name)
    parent = latest_tree_backup(repo, volume_key)
    tags = {"statehold.io/kind": "shared", "statehold.io/size": str(vol.size), **(labels or {})}
    if not snapshot:
        return backup_tree(repo, vol.path, volume=volume_key, parent=parent, labels=tags,
                           workers=workers, origin=origin)
    store = SnapshotStore(root)
    digest = hashlib.sha256(f"{name}\0{time.time_ns()}".encode()).hexdigest()[:16]
    snap = store.create(name, f"backup-{digest}")
    try:
        return backup_tree(repo, snap.path, volume=volume_key, parent=parent, labels=tags,
                           workers=workers, origin=origin)
    finally:
        store.delete(snap.name)


def restore_volume(repo: Repository, backup_id: str, root: SharedRoot, name: str, *,
                   size: int | None = None, policy: DeletionPolicy = DeletionPolicy.DELETE,
                   enforce: bool = False, parallel: int = 8) -> SharedVolume:
    """A new volume ``name`` holding the backup's tree. ``size`` defaults to the backed-up
    volume's size (recorded in the backup's labels), else the bytes the backup holds;
    OutOfRange when smaller than those bytes. Idempotent like any create."""
    manifest = repo.load_manifest(backup_id)
    if manifest.kind != "tree":
        raise InvalidArgument(f"backup {backup_id} is a {manifest.kind} backup, not a file tree")
    problem = unstorable(manifest, root)
    if problem:
        raise FailedPrecondition(f"backup {backup_id} cannot be restored onto {root.path}: {problem}")
    recorded = manifest.labels.get("statehold.io/size", "")
    want = size if size is not None else (int(recorded) if recorded.isdigit() else max(manifest.size, 1))
    if want < manifest.size:
        raise OutOfRange(f"backup {backup_id} holds {manifest.size} bytes; size {want} is smaller")
    return root.create_volume(
        name, want, policy=policy, enforce=enforce, source=Source(SourceKind.BACKUP, backup_id),
        populate=lambda staging: restore_tree(repo, backup_id, staging, parallel=parallel),
    )


def unstorable(manifest: Manifest, root: SharedRoot) -> str:
    """Why the backup's tree cannot be stored on ``root`` as it is ("" when it can): rather
    a clear refusal before anything is created than two files merged into one or a
    restore that fails half-way."""
    entries = manifest.tree or []
    if not root.traits.case_sensitive:
        clashes = case_clashes(str(e["path"]) for e in entries)
        if clashes:
            shown = "; ".join(" and ".join(group) for group in clashes[:3])
            more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
            return (f"names on it are case-insensitive and the backup holds files whose names "
                    f"differ only by case: {shown}{more}")
    if not root.traits.symlinks:
        links = [str(e["path"]) for e in entries if e.get("type") == "symlink"]
        if links:
            return (f"its filesystem ({root.traits.fstype or 'probed'}) stores no symlinks and "
                    f"the backup holds {len(links)}, e.g. {links[0]}")
    return ""
