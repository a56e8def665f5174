"""The operator's way to the volume backup service (:mod:`statehold.backup.volumes`, which
the CLI uses too): a BackupTarget's settings become a repository; parent choice, snapshot
naming and clean-up, locking and retention are the service's.
"""

from __future__ import annotations

from collections.abc import Mapping

from statehold.backup import targets
from statehold.backup.collecting import GcResult, gc
from statehold.backup.pipeline import Progress
from statehold.backup.repository import Repository
from statehold.backup.retention import Policy
from statehold.backup.store import Store
from statehold.backup.targets import Target
from statehold.backup.volumes import BackupResult, backup_volume, restore_into_volume
from statehold.controller.targets import TargetConfig
from statehold.engine.pool import Pool
from statehold.errors import AlreadyExists, NotFound


def open_store(target: TargetConfig) -> Store:
    """The target's store, through the backup engine's own target model."""
    # the name is only a label in the engine's model (ours may be a dotted subdomain)
    t = Target(name="cluster", kind="s3" if target.kind == "s3" else "dir",
               path=target.path or None, bucket=target.bucket or None, prefix=target.prefix,
               endpoint=target.endpoint or None, region=target.region)
    # a directory target's root may be new (first backup); an S3 bucket must exist
    return targets.open_store(t.validate(), access_key=target.access_key or None,
                              secret_key=target.secret_key or None, create=t.kind == "dir")


NEW_FORMAT = 2
"""Format of a repository the operator creates (as `statehold target add` does): packs and
an index (format §11). An existing repository is opened in whatever format it has: a
format 1 one stays format 1 until `statehold backup migrate` converts it."""


def open_repository(target: TargetConfig) -> Repository:
    """Open the target's repository, creating it (format :data:`NEW_FORMAT`) on first use."""
    store = open_store(target)
    try:
        return Repository.open(store, target.password)
    except NotFound:
        try:
            return Repository.init(store, target.password, version=NEW_FORMAT)
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


def back_up_volume(pool: Pool, volume: str, target: TargetConfig, *, key: str,
                   labels: Mapping[str, str] | None = None, progress: Progress | None = None,
                   keep_last: int = 0, origin: str = "") -> BackupResult:
    """Back ``volume`` up to the target's repository through the volume backup service;
    ``key`` (the VolumeBackup's uid) makes a retry name the same snapshot and find the
    backup if it was already committed; ``origin`` (a schedule's) goes into the manifest.
    Prunes the volume's backups of that origin to ``keep_last`` if set (the operator
    prunes as a step of its own: :mod:`statehold.controller.pruning`)."""
    policy = Policy(keep_last=keep_last) if keep_last > 0 else None
    return backup_volume(open_repository(target), pool, volume, key=key, labels=labels,
                         progress=progress, retention=policy, origin=origin)


def collect_garbage(target: TargetConfig, *, grace: float) -> GcResult:
    """Garbage collection of the target's repository (under its exclusive lock: Aborted
    while anything else holds it). NotFound when there is no repository yet."""
    return gc(Repository.open(open_store(target), target.password), grace=grace)


def backup_size(target: TargetConfig, backup_id: str) -> int:
    return open_repository(target).load_manifest(backup_id).size


def restore_into(target: TargetConfig, backup_id: str, pool: Pool, volume: str, *,
                 progress: Progress | None = None) -> int:
    """Fill a new, blank volume from the backup; returns the bytes of the backup."""
    return restore_into_volume(open_repository(target), backup_id, pool, volume,
                               progress=progress).size
