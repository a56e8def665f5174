"""Prune (remove manifests by retention) and garbage collection (mark and sweep).

Both run under the exclusive lock, so no backup is writing chunks or reading a parent while
they run. GC also spares chunks younger than ``grace`` (store mtime): the belt to the
locks' braces for writers with bad clocks (format §9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from statehold.backup import retention
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.locks import Lock, remove_expired
from statehold.backup.repository import Repository, manifest_key

log = logging.getLogger("statehold.backup.gc")


@dataclass(frozen=True, slots=True)
class PruneResult:
    kept: dict[str, list[str]]
    removed: list[str]
    dry_run: bool


@dataclass(frozen=True, slots=True)
class GcResult:
    chunks_total: int
    chunks_referenced: int
    chunks_deleted: int
    bytes_deleted: int
    chunks_in_grace: int
    locks_removed: int


def prune(repo: Repository, policy: retention.Policy, *, volume: str | None = None,
          dry_run: bool = False) -> PruneResult:
    """Remove the manifests the policy does not keep (only of ``volume`` when given)."""
    with Lock(repo, "exclusive"):
        items = [retention.Item(m.backup_id, m.volume, m.created) for m in repo.manifests()
                 if volume is None or m.volume == volume]
        decision = retention.apply(policy, items)
        if not dry_run:
            for bid in decision.remove:
                repo.store.delete(manifest_key(bid))
                log.info("prune removed=%s", bid)
        return PruneResult(decision.keep, decision.remove, dry_run)


def gc(repo: Repository, *, grace: float = 3600.0, clock: Callable[[], float] = time.time,
       dry_run: bool = False) -> GcResult:
    """Delete chunks no manifest references. Any unreadable manifest aborts (raises):
    deleting on partial knowledge could destroy a backup."""
    with Lock(repo, "exclusive"):
        marked: set[bytes] = set()
        for m in repo.manifests():
            marked.update(m.chunk_ids())
        now = clock()
        total = deleted = in_grace = freed = 0
        for info in list(repo.store.list("chunks/")):
            total += 1
            try:
                cid = bytes.fromhex(info.key.rpartition("/")[2])
            except ValueError:
                continue
            if cid in marked:
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
        log.info("gc chunks=%d referenced=%d deleted=%d bytes=%d grace=%d", total, len(marked), deleted,
                 freed, in_grace)
        return GcResult(total, len(marked), deleted, freed, in_grace, locks)
