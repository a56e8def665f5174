"""Removing backups: prune (manifests by retention), forget (one manifest) and garbage
collection (mark and sweep of chunks).

All three run under the exclusive lock, so no backup is writing chunks or reading a parent
while they run. GC also spares chunks younger than ``grace`` (store mtime): the belt to the
locks' braces for writers with bad clocks (format §9).

Damaged manifests (format §9.1) never stop them: prune and gc move each one they meet to
``quarantine/`` and report it. GC deletes no chunk at all while any manifest cannot be
read, quarantined ones included: nobody can tell which chunks such a manifest names, so
no chunk is provably unreferenced. ``forget`` of that backup is the way out.

In a version 2 repository gc works on packs (:mod:`.packgc`, format §11.7): dead packs are
deleted, sparse ones repacked, the index objects naming them rewritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from statehold.backup import chunkstore, packgc, retention
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.locks import Lock, remove_expired
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Damaged, Repository, manifest_key, quarantine_key
from statehold.errors import NotFound

log = logging.getLogger("statehold.backup.gc")


@dataclass(frozen=True, slots=True)
class PruneResult:
    kept: dict[str, list[str]]
    removed: list[str]
    dry_run: bool
    damaged: tuple[Damaged, ...] = ()
    """Manifests that could not be read: neither kept nor removed (their volume is unknown),
    quarantined unless ``dry_run``."""


@dataclass(frozen=True, slots=True)
class GcResult:
    chunks_total: int
    chunks_referenced: int
    chunks_deleted: int
    bytes_deleted: int
    chunks_in_grace: int
    locks_removed: int
    chunks_kept_unknown: int = 0
    """Chunks no readable backup references, kept because a damaged one may."""
    damaged: tuple[Damaged, ...] = ()
    """Manifests that could not be read (quarantined unless ``dry_run``): while there is
    one, no chunk is deleted."""


@dataclass(frozen=True, slots=True)
class ForgetResult:
    backup_id: str
    removed: tuple[str, ...]
    """The keys deleted: its manifest, and its quarantined copy if there was one."""


def quarantine_damaged(repo: Repository, damaged: list[Damaged]) -> tuple[Damaged, ...]:
    """Move every ``damaged`` manifest still under ``manifests/`` to ``quarantine/`` (a
    newer-version one is not damaged and stays); returns the list as it is afterwards."""
    out = []
    for d in damaged:
        if d.state == "damaged":
            try:
                d = Damaged(d.backup_id, repo.quarantine(d.key), d.reason, "quarantined")
            except NotFound:
                continue  # forgotten meanwhile
        out.append(d)
    return tuple(out)


def prune(repo: Repository, policy: retention.Policy, *, volume: str | None = None,
          origin: str | None = None, dry_run: bool = False) -> PruneResult:
    """Remove the manifests the policy does not keep (only of ``volume`` when given, and
    only of ``origin`` when given: ``""`` is the backups made by hand). The others are
    neither kept nor removed: the result names only the backups the policy judged.
    Damaged manifests are quarantined and reported, never counted or removed."""
    policy.check()  # refuse a policy that keeps nothing before taking the lock
    with Lock(repo, "exclusive"):
        listing = repo.scan()
        damaged = tuple(listing.damaged) if dry_run else quarantine_damaged(repo, listing.damaged)
        items = [retention.Item(m.backup_id, m.volume, m.created) for m in listing.manifests
                 if (volume is None or m.volume == volume)
                 and (origin is None or m.origin == origin)]
        decision = retention.apply(policy, items)
        if not dry_run:
            for bid in decision.remove:
                repo.store.delete(manifest_key(bid))
                log.info("prune removed=%s", bid)
        return PruneResult(decision.keep, decision.remove, dry_run, damaged)


def forget(repo: Repository, backup_id: str) -> ForgetResult:
    """Remove one backup: its manifest (readable, damaged or quarantined). Its chunks stay
    until the next gc, which deletes those no other backup references. Backups that name it
    as their parent are unaffected: every manifest is complete (format §6.2)."""
    with Lock(repo, "exclusive"):
        keys = [k for k in (manifest_key(backup_id), quarantine_key(manifest_key(backup_id)))
                if repo.store.exists(k)]
        if not keys:
            raise NotFound(f"backup {backup_id} not found in {repo.store.describe()}")
        for key in keys:
            repo.store.delete(key)
        log.info("forget backup=%s removed=%s", backup_id, ",".join(keys))
        return ForgetResult(backup_id, tuple(keys))


def gc(repo: Repository, *, grace: float = 3600.0, clock: Callable[[], float] = time.time,
       dry_run: bool = False) -> GcResult:
    """Delete chunks no manifest references. While any manifest cannot be read (damaged,
    quarantined or of a newer version) no chunk is deleted: it may be one of that
    manifest's, and deleting on partial knowledge could destroy a backup."""
    with Lock(repo, "exclusive"):
        listing = repo.scan()
        damaged = tuple(listing.damaged) if dry_run else quarantine_damaged(repo, listing.damaged)
        if chunkstore.packed(repo):
            return _gc_packed(repo, listing.manifests, damaged, grace=grace, now=clock(), dry_run=dry_run)
        marked: set[bytes] = set()
        for m in listing.manifests:
            marked.update(m.chunk_ids())
        now = clock()
        total = deleted = in_grace = freed = unknown = 0
        for info in list(repo.store.list("chunks/")):
            total += 1
            try:
                cid = bytes.fromhex(info.key.rpartition("/")[2])
            except ValueError:
                continue
            if cid in marked:
                continue
            if damaged:
                unknown += 1
                continue
            if now - info.mtime < grace:
                in_grace += 1
                continue
            if not dry_run:
                repo.store.delete(info.key)
            deleted += 1
            freed += info.size
        locks = 0 if dry_run else remove_expired(repo, now)
        if not dry_run and isinstance(repo.store, DirectoryStore):
            repo.store.remove_stale(grace)  # temporaries of writers that died before commit
        if damaged:
            log.warning("gc kept=%d unreferenced chunks: %d manifests cannot be read (%s)", unknown,
                        len(damaged), ",".join(d.backup_id for d in damaged))
        log.info("gc chunks=%d referenced=%d deleted=%d bytes=%d grace=%d", total, len(marked), deleted,
                 freed, in_grace)
        return GcResult(total, len(marked), deleted, freed, in_grace, locks, unknown, damaged)


def _gc_packed(repo: Repository, manifests: list[Manifest], damaged: tuple[Damaged, ...], *, grace: float,
               now: float, dry_run: bool) -> GcResult:
    """Format 2: pack-level gc (format §11.7), reported in the terms of format 1's."""
    r = packgc.collect(repo, manifests, unreadable=bool(damaged), grace=grace, now=now, dry_run=dry_run)
    locks = 0 if dry_run else remove_expired(repo, now)
    if not dry_run and isinstance(repo.store, DirectoryStore):
        repo.store.remove_stale(grace)
    if damaged or r.index_damaged:
        log.warning("gc kept=%d unreferenced chunks: %d manifests and %d index objects cannot be read",
                    r.chunks_kept_unknown, len(damaged), len(r.index_damaged))
    log.info("gc chunks=%d referenced=%d deleted=%d bytes=%d packs deleted=%d repacked=%d", r.chunks_total,
             r.chunks_referenced, r.chunks_deleted, r.bytes_deleted, r.packs_deleted, r.packs_repacked)
    return GcResult(r.chunks_total, r.chunks_referenced, r.chunks_deleted, r.bytes_deleted, r.chunks_in_grace,
                    locks, r.chunks_kept_unknown, damaged)
