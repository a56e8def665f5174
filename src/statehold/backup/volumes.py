"""Backups of engine volumes, the one service the CLI and the operator share: snapshot the
volume, back the snapshot up incrementally, keep it as the next parent; restore into a
volume. Conventions (docs/design/backup-format.md §7.1):

* **Snapshot names**: ``<volume>-bk-<20 hex>``. The hex is a hash of the volume and the
  caller's stable ``key`` when it gives one (the operator gives the VolumeBackup's uid, so a
  retry names the same snapshot), random otherwise. :func:`is_backup_snapshot` also knows
  the names of earlier releases (``<volume>-bk-<utc time>-<4 hex>`` from the CLI,
  ``vb-<24 hex>`` from the operator), so their snapshots are still cleaned up.
* **Manifest**: ``snapshot`` is ``pool/name``; a bare ``name`` (operator backups of
  earlier releases) means the volume's own pool, and is read as well. Labels: ``mode``,
  ``fs`` (filesystem volumes), then the caller's. ``origin``: the caller's (a schedule's
  ``schedule/<namespace>/<name>``), empty for a backup made by hand.
* **Retention**: a policy given with the backup is applied to the volume's backups of the
  same origin only, so a schedule never removes a backup made by hand or by another.
* **Parent**: the newest backup of the volume in this repository whose snapshot is still
  in the pool: taken from this volume, before that backup was committed (a later snapshot
  under the same name is not what the backup read).
* **Clean-up**: once a backup is committed, the snapshots of the volume that this
  repository's other backups read are deleted, if they are backup snapshots (never a user's
  snapshot): one snapshot per volume and repository stays, as the next parent. A failed
  backup deletes its own snapshot.
* **One at a time**: a volume's backups are serialised on the host
  (:mod:`statehold.backup.volumelock`), so none deletes the parent another is reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from statehold.backup import retention as retention_rules
from statehold.backup.collecting import prune
from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.pipeline import Progress
from statehold.backup.repository import Damaged, Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy
from statehold.backup.volumelock import volume_lock
from statehold.engine.names import MAX_NAME
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, Volume, VolumeMode
from statehold.errors import (
    AlreadyExists,
    Corrupt,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StateholdError,
)

log = logging.getLogger("statehold.backup.volumes")

SNAPSHOT_MARK = "-bk-"
_TAG_BYTES = 10
_BACKUP_SNAPSHOT = re.compile(
    r"[a-z0-9-]+-bk-[0-9a-f]{20}"               # this scheme
    r"|[a-z0-9-]+-bk-[0-9]{8}t[0-9]{6}-[0-9a-f]{4}"  # the CLI's, before it
    r"|vb-[0-9a-f]{24}"                          # the operator's, before it
)


def snapshot_name(volume: str, key: str | None = None) -> str:
    """The name of a backup snapshot of ``volume``: the same for the same ``key``, fresh
    without one. The volume's part is cut so that the name fits a DNS-1123 label."""
    if key:
        tag = hashlib.blake2b(f"{volume}\0{key}".encode(), digest_size=_TAG_BYTES).hexdigest()
    else:
        tag = secrets.token_hex(_TAG_BYTES)
    suffix = SNAPSHOT_MARK + tag
    return volume[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def is_backup_snapshot(name: str) -> bool:
    """Did a volume backup (this release's or an earlier one's) name this snapshot?"""
    return _BACKUP_SNAPSHOT.fullmatch(name) is not None


def snapshot_in_pool(m: Manifest, pool: str) -> str | None:
    """The name in ``pool`` of the snapshot backup ``m`` read, or None if it read none there.
    ``m.snapshot`` is ``pool/name``, or a bare name in the volume's own pool."""
    where, sep, name = (m.snapshot or "").rpartition("/")
    if not sep:
        where = m.volume.partition("/")[0]
    return name if name and where == pool else None


@dataclass(frozen=True, slots=True)
class BackupResult:
    manifest: Manifest
    snapshot: str
    """Name, in the volume's pool, of the snapshot the backup read (the next parent)."""
    pruned: tuple[str, ...] = ()
    """Backups of the volume the retention policy removed."""
    damaged: tuple[Damaged, ...] = ()
    """Manifests of the repository that could not be read (of any volume: which one is
    unknown). Passed over when choosing the parent; quarantined by prune and gc."""

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id

    @property
    def parent_id(self) -> str | None:
        return self.manifest.parent

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def bytes_read(self) -> int:
        return self.manifest.stats.bytes_read

    @property
    def bytes_uploaded(self) -> int:
        """Encoded (compressed, encrypted) bytes stored."""
        return self.manifest.stats.stored_new


@dataclass(frozen=True, slots=True)
class _Earlier:
    """What the service needs of an earlier backup of the volume (not its entries)."""

    backup_id: str
    created: float
    snapshot: str | None
    """Its snapshot's name in this pool."""


def backup_volume(repo: Repository, pool: Pool, volume: str, *, key: str | None = None,
                  freeze: bool = True, labels: Mapping[str, str] | None = None,
                  progress: Progress | None = None, retention: Policy | None = None,
                  origin: str = "") -> BackupResult:
    """Snapshot ``volume`` (fsfreeze if mounted and ``freeze``), back the snapshot up
    against the parent, delete the snapshots it superseded, then apply ``retention`` to the
    volume's backups of the same ``origin`` (best effort: the backup is committed; the next
    one prunes again).

    With ``key``, idempotent: the same key names the same snapshot, and when a backup of
    it is already committed that backup is the result (nothing is read again).
    """
    if retention is not None:
        retention_rules.apply(retention, [])  # refuse a policy that keeps nothing, up front
    vol = pool.get_volume(volume)
    with volume_lock(vol.id, vol.path):
        earlier, damaged = _earlier(repo, vol.id, pool.name)
        name = snapshot_name(vol.name, key)
        done = next((e for e in earlier if key and e.snapshot == name), None)
        if done is not None:
            m = repo.load_manifest(done.backup_id)
            log.info("backup volume=%s key=%s already done: %s", vol.id, key, m.backup_id)
        else:
            m = _back_up(repo, pool, vol, name, earlier, freeze=freeze, labels=labels,
                         progress=progress, origin=origin)
        pruned = _apply(retention, repo, vol.id, origin) if retention is not None else ()
        return BackupResult(m, name, pruned, damaged)


def _back_up(repo: Repository, pool: Pool, vol: Volume, name: str, earlier: list[_Earlier], *,
             freeze: bool, labels: Mapping[str, str] | None, progress: Progress | None,
             origin: str) -> Manifest:
    parent = _parent(repo, pool, vol, earlier)
    snap = pool.create_snapshot(vol.name, name, freeze=freeze)  # a retry's reuses it
    meta = {"mode": vol.mode.value, **({"fs": vol.fs.value} if vol.fs else {}), **(labels or {})}
    try:
        m = create_backup(repo, snap.path, volume=vol.id, parent=parent, snapshot=snap.id,
                          labels=meta, progress=progress, origin=origin)
    except BaseException:
        with contextlib.suppress(Exception):
            pool.delete_snapshot(snap.name)
        raise
    # committed, and the newest: the snapshots of the backups before it are superseded
    for old in sorted({e.snapshot for e in earlier if e.snapshot and e.snapshot != name}):
        _delete_backup_snapshot(pool, vol, old)
    return m


def _earlier(repo: Repository, volume_id: str, pool: str) -> tuple[list[_Earlier], tuple[Damaged, ...]]:
    """This repository's backups of the volume, newest first, and the manifests that could
    not be read (skipped: a damaged manifest never stops a backup, format §9.1)."""
    damaged: list[Damaged] = []

    def skip(backup_id: str, exc: Exception) -> None:
        log.warning("backup volume=%s ignores manifest %s: %s", volume_id, backup_id, exc)
        damaged.append(Damaged.unreadable(backup_id, exc))

    found = [_Earlier(m.backup_id, m.created, snapshot_in_pool(m, pool))
             for m in repo.manifests(on_error=skip) if m.volume == volume_id and m.kind == "image"]
    return sorted(found, key=lambda e: (e.created, e.backup_id), reverse=True), tuple(damaged)


def _parent(repo: Repository, pool: Pool, vol: Volume, earlier: list[_Earlier]) -> Parent | None:
    for e in earlier:
        if e.snapshot is None:
            continue
        try:
            snap = pool.get_snapshot(e.snapshot)
            if snap.source_volume != vol.name or snap.created_at > e.created:
                continue  # the name was reused: not the snapshot that backup read
            return Parent(repo.load_manifest(e.backup_id), snap.path)
        except (NotFound, Corrupt):  # forgotten or damaged since the listing
            continue
    return None


def _delete_backup_snapshot(pool: Pool, vol: Volume, name: str) -> None:
    if not is_backup_snapshot(name):
        return  # a user's snapshot is never ours to delete
    try:
        if pool.get_snapshot(name).source_volume != vol.name:
            return
        pool.delete_snapshot(name)
    except NotFound:
        return
    except StateholdError as exc:  # the backup is committed; the next one tries again
        log.warning("backup volume=%s could not delete superseded snapshot %s: %s", vol.id, name, exc)
        return
    log.info("backup volume=%s deleted superseded snapshot %s", vol.id, name)


def _apply(policy: Policy, repo: Repository, volume_id: str, origin: str) -> tuple[str, ...]:
    try:
        return tuple(prune(repo, policy, volume=volume_id, origin=origin).removed)
    except StateholdError as exc:  # e.g. Aborted: another backup holds the repository
        log.warning("backup volume=%s retention not applied this time: %s", volume_id, exc)
        return ()


def restore_into_volume(repo: Repository, backup_id: str, pool: Pool, name: str, *,
                        progress: Progress | None = None, parallel: int = 16) -> Manifest:
    """Fill volume ``name`` from the backup: it must be new (no data yet), not attached,
    and at least the backup's size. Returns the backup's manifest."""
    vol = pool.get_volume(name)
    if vol.device is not None:
        raise FailedPrecondition(f"volume {vol.id} is attached ({vol.device}); restore only into "
                                 "a volume before its first attach")
    m = restore_image(repo, backup_id, vol.path, existing=True, parallel=parallel, progress=progress)
    log.info("restore backup=%s volume=%s", backup_id, vol.id)
    return m


def restore_volume(repo: Repository, backup_id: str, pool: Pool, name: str, *,
                   progress: Progress | None = None, parallel: int = 16) -> Volume:
    """Create volume ``name`` with the backup's size, mode and filesystem and fill it from
    the backup; on failure the volume is deleted."""
    if any(v.name == name for v in pool.list_volumes()):
        raise AlreadyExists(f"volume {pool.name}/{name} exists; restore only creates new volumes")
    m = repo.load_manifest(backup_id)
    if m.kind != "image":
        raise InvalidArgument(f"backup {backup_id} is a {m.kind} backup, not a volume image")
    mode = VolumeMode(m.labels.get("mode", VolumeMode.BLOCK.value))
    fs = FsType(m.labels["fs"]) if m.labels.get("fs") and mode is VolumeMode.FILESYSTEM else None
    size = -(-m.size // MiB) * MiB
    pool.create_volume(name, size, mode=mode, fs=fs, labels={"statehold.io/restored-from": backup_id})
    try:
        restore_into_volume(repo, backup_id, pool, name, progress=progress, parallel=parallel)
    except BaseException:
        with contextlib.suppress(Exception):
            pool.delete_volume(name)
        raise
    return pool.get_volume(name)
