"""The backup engine, as the operator uses it: back up a volume (snapshot -> incremental
backup against the previous one), restore a backup into a volume's backing file.

The parent of an incremental backup is the newest backup of the same volume whose engine
snapshot still exists on this node: the FIEMAP diff between the two snapshots says what to
read. So after each backup the operator keeps exactly one backup snapshot per volume (the
newest) and deletes the older ones it made (names start with ``SNAPSHOT_PREFIX``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from statehold.backup import targets
from statehold.backup.collecting import prune
from statehold.backup.imagebackup import Parent, create_backup, latest_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.store import Store
from statehold.backup.targets import Target
from statehold.controller.targets import TargetConfig
from statehold.engine.pool import Pool
from statehold.errors import AlreadyExists, NotFound

log = logging.getLogger("statehold.controller.backup")

SNAPSHOT_PREFIX = "vb-"
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BackupDone:
    backup_id: str
    parent_id: str | None
    size: int
    bytes_read: int
    bytes_uploaded: int
    snapshot: str


def open_store(target: TargetConfig) -> Store:
    """The target's store, through the backup engine's own target model."""
    # the name is only a label in the engine's model (ours may be a dotted subdomain)
    t = Target(name="cluster", kind="s3" if target.kind == "s3" else "dir",
               path=target.path or None, bucket=target.bucket or None, prefix=target.prefix,
               endpoint=target.endpoint or None, region=target.region)
    # a directory target's root may be new (first backup); an S3 bucket must exist
    return targets.open_store(t.validate(), access_key=target.access_key or None,
                              secret_key=target.secret_key or None, create=t.kind == "dir")


def open_repository(target: TargetConfig) -> Repository:
    """Open the target's repository, creating it on first use."""
    store = open_store(target)
    try:
        return Repository.open(store, target.password)
    except NotFound:
        try:
            return Repository.init(store, target.password)
        except AlreadyExists:  # another node created it meanwhile
            return Repository.open(store, target.password)


def probe(target: TargetConfig) -> str:
    """Open the target's repository read-only: "" if it opens, "missing" if there is none
    yet (the first backup creates it). PermissionDenied (wrong password or S3 keys),
    Unavailable (unreachable), Corrupt propagate."""
    try:
        Repository.open(open_store(target), target.password)
    except NotFound:
        return "missing"
    return ""


def snapshot_name(uid: str) -> str:
    return SNAPSHOT_PREFIX + uid.replace("-", "")[:24]


volume_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def volume_lock(volume_id: str) -> threading.Lock:
    """One backup of a volume at a time on this node: each keeps only its own snapshot as
    the next parent, so two at once would delete each other's parent."""
    with _locks_guard:
        return volume_locks.setdefault(volume_id, threading.Lock())


def back_up_volume(pool: Pool, volume: str, target: TargetConfig, *, snapshot: str,
                   labels: Mapping[str, str] | None = None, progress: Progress | None = None,
                   keep_last: int = 0) -> BackupDone:
    """Snapshot ``volume`` (frozen if mounted), back it up incrementally, keep only this
    snapshot as the next parent, and prune the volume's backups to ``keep_last`` if set."""
    volume_id = f"{pool.name}/{volume}"
    with volume_lock(volume_id):
        return _back_up(pool, volume, volume_id, target, snapshot=snapshot, labels=labels,
                        progress=progress, keep_last=keep_last)


def _back_up(pool: Pool, volume: str, volume_id: str, target: TargetConfig, *, snapshot: str,
             labels: Mapping[str, str] | None, progress: Progress | None,
             keep_last: int) -> BackupDone:
    repo = open_repository(target)
    snap = pool.create_snapshot(volume, snapshot)  # idempotent: a retry reuses it
    parent = None
    previous = latest_backup(repo, volume_id)
    if previous is not None and previous.snapshot and previous.snapshot != snapshot:
        try:
            parent = Parent(previous, pool.get_snapshot(previous.snapshot).path)
        except NotFound:
            parent = None
    m = create_backup(repo, snap.path, volume=volume_id, parent=parent, snapshot=snapshot,
                      labels=labels, progress=progress)
    for old in pool.list_snapshots(volume):
        if old.name.startswith(SNAPSHOT_PREFIX) and old.name != snapshot:
            with contextlib.suppress(NotFound):
                pool.delete_snapshot(old.name)
    if keep_last > 0:
        prune(repo, Policy(keep_last=keep_last), volume=volume_id)
    return BackupDone(backup_id=m.backup_id, parent_id=m.parent, size=m.size,
                      bytes_read=m.stats.bytes_read, bytes_uploaded=m.stats.stored_new,
                      snapshot=snapshot)


def backup_size(target: TargetConfig, backup_id: str) -> int:
    return open_repository(target).load_manifest(backup_id).size


def restore_into(target: TargetConfig, backup_id: str, image: Path, *,
                 progress: Progress | None = None) -> int:
    """Restore into a new volume's blank backing file; returns the bytes of the backup."""
    m = restore_image(open_repository(target), backup_id, image, existing=True, progress=progress)
    return m.size
