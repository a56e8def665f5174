"""Backups of engine volumes: snapshot, back the snapshot up, keep it as the next parent;
restore into a new volume before its first attach.

The snapshot a backup read stays in the pool (named ``<volume>-bk-<time>``) until the next
backup of that volume to the same repository has used it as its parent: that is what lets
the next backup read only the changed extents.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

from statehold.backup.imagebackup import Parent, create_backup
from statehold.backup.manifest import Manifest
from statehold.backup.pipeline import Progress
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, Volume, VolumeMode
from statehold.errors import AlreadyExists, InvalidArgument, NotFound

log = logging.getLogger("statehold.backup.volumes")

SNAPSHOT_MARK = "-bk-"


def snapshot_name(volume: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime(time.time() if now is None else now))
    suffix = f"{SNAPSHOT_MARK}{stamp}-{secrets.token_hex(2)}"
    return volume[: 63 - len(suffix)].rstrip("-") + suffix


def find_parent(repo: Repository, pool: Pool, volume_id: str) -> Parent | None:
    """The newest backup of the volume whose snapshot is still in the pool."""
    candidates = sorted((m for m in repo.manifests() if m.volume == volume_id and m.snapshot),
                        key=lambda m: (m.created, m.backup_id), reverse=True)
    for m in candidates:
        spool, _, sname = (m.snapshot or "").partition("/")
        if spool != pool.name:
            continue
        try:
            snap = pool.get_snapshot(sname)
        except NotFound:
            continue
        return Parent(m, snap.path)
    return None


def backup_volume(repo: Repository, pool: Pool, volume: str, *, freeze: bool = True,
                  progress: Progress | None = None, labels: dict[str, str] | None = None) -> Manifest:
    vol = pool.get_volume(volume)
    parent = find_parent(repo, pool, vol.id)
    snap = pool.create_snapshot(volume, snapshot_name(volume), freeze=freeze)
    meta = {"mode": vol.mode.value, **({"fs": vol.fs.value} if vol.fs else {}), **(labels or {})}
    try:
        m = create_backup(repo, snap.path, volume=vol.id, parent=parent, snapshot=snap.id, labels=meta,
                          progress=progress)
    except BaseException:
        with contextlib.suppress(Exception):
            pool.delete_snapshot(snap.name)
        raise
    if parent is not None:
        old = (parent.manifest.snapshot or "").partition("/")[2]
        if SNAPSHOT_MARK in old:
            with contextlib.suppress(NotFound):
                pool.delete_snapshot(old)  # superseded: the new snapshot is the next parent
    return m


def restore_volume(repo: Repository, backup_id: str, pool: Pool, name: str, *,
                   progress: Progress | None = None, parallel: int = 16) -> Volume:
    """Create volume ``name`` and fill it from the backup; on failure the volume is deleted."""
    if any(v.name == name for v in pool.list_volumes()):
        raise AlreadyExists(f"volume {pool.name}/{name} exists; restore only creates new volumes")
    m = repo.load_manifest(backup_id)
    if m.kind != "image":
        raise InvalidArgument(f"backup {backup_id} is a {m.kind} backup, not a volume image")
    mode = VolumeMode(m.labels.get("mode", VolumeMode.BLOCK.value))
    fs = FsType(m.labels["fs"]) if m.labels.get("fs") and mode is VolumeMode.FILESYSTEM else None
    size = -(-m.size // MiB) * MiB
    vol = pool.create_volume(name, size, mode=mode, fs=fs, labels={"statehold.io/restored-from": backup_id})
    try:
        restore_image(repo, backup_id, vol.path, existing=True, parallel=parallel, progress=progress)
    except BaseException:
        with contextlib.suppress(Exception):
            pool.delete_volume(name)
        raise
    log.info("restore backup=%s volume=%s", backup_id, vol.id)
    return pool.get_volume(name)
