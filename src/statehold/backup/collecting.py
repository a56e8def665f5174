"""Removing backups: prune (manifests by retention), forget (one manifest, or one group)
and garbage collection (mark and sweep of chunks).

Groups (format §6.4) are units: prune decides on a StatefulSet's groups by their
manifests' time and removes a group's manifest with all its members; forget refuses a
member alone. So no group ever names a missing backup, and gc (which marks every readable
manifest, members included) keeps every chunk a group's restore needs.

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
from dataclasses import dataclass, field

from statehold.backup import chunkstore, groupmanifest, packgc, retention
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.locks import Lock, remove_expired
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Damaged, Repository, manifest_key, quarantine_key
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("statehold.backup.gc")


@dataclass(frozen=True, slots=True)
class PruneResult:
    kept: dict[str, list[str]]
    """Single backups (no group names them) kept -> the rules that keep them."""
    removed: list[str]
    """Single backups removed."""
    dry_run: bool
    damaged: tuple[Damaged, ...] = ()
    """Manifests that could not be read: neither kept nor removed (their volume is unknown),
    quarantined unless ``dry_run``."""
    groups_kept: dict[str, list[str]] = field(default_factory=dict)
    """Group backups kept -> the rules that keep them (their members with them)."""
    groups_removed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Group backups removed -> the member backups removed with them."""
    groups_unreadable: tuple[str, ...] = ()
    """Group manifests that could not be read: neither kept nor removed, and no backup that
    may be one of their members was judged (format §9)."""


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
    """The keys deleted: its manifest, and its quarantined copy if there was one (for a
    group: the group manifest first, then each member's)."""


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
          origin: str | None = None, statefulset: tuple[str, str] | None = None,
          dry_run: bool = False) -> PruneResult:
    """Remove the backups the policy does not keep, deciding on groups as units (format §9):
    a member backup that a group manifest names is never judged alone; each set's groups
    are judged by their manifests' time, and a group removed goes with all its members.

    Scope: ``volume`` judges that volume's single backups only (never a group: removing one
    would remove other volumes' backups); ``statefulset`` (namespace, name) judges that
    set's groups and the single backups labelled as its members (left by a group backup
    cut short before its group manifest); neither judges everything. ``origin`` (``""``:
    made by hand) limits both. What is out of scope is neither kept nor removed. Damaged
    manifests are quarantined and reported, never counted or removed."""
    policy.check()  # refuse a policy that keeps nothing before taking the lock
    if volume is not None and statefulset is not None:
        raise InvalidArgument("prune one volume or one StatefulSet's groups, not both")
    with Lock(repo, "exclusive"):
        listing = repo.scan()
        damaged = tuple(listing.damaged) if dry_run else quarantine_damaged(repo, listing.damaged)
        unreadable: list[str] = []
        every = list(groupmanifest.groups(repo, on_error=lambda gid, exc: unreadable.append(gid)
                                          if not isinstance(exc, NotFound) else None))
        named = {bid for g in every for bid in g.backup_ids}
        singles = [m for m in listing.manifests if m.backup_id not in named
                   and _single_in_scope(m, volume, statefulset, set(unreadable))
                   and (origin is None or m.origin == origin)]
        judged_groups = [] if volume is not None else [
            g for g in every if (statefulset is None or (g.namespace, g.set_name) == statefulset)
            and (origin is None or g.origin == origin)]
        single = retention.apply(policy, [retention.Item(m.backup_id, m.volume, m.created)
                                          for m in singles])
        grouped = retention.apply(policy, [
            retention.Item(g.group_id, f"{g.namespace}/{g.set_name}", g.created)
            for g in judged_groups])
        doomed = set(grouped.remove)
        still_named = {bid for g in every if g.group_id not in doomed for bid in g.backup_ids}
        removed_groups: dict[str, tuple[str, ...]] = {}
        for g in judged_groups:
            if g.group_id in doomed:
                members = tuple(b for b in g.backup_ids if b not in still_named)
                removed_groups[g.group_id] = members
                if not dry_run:
                    _remove_group(repo, g.group_id, members)
                    log.info("prune removed group=%s set=%s/%s members=%s", g.group_id,
                             g.namespace, g.set_name, ",".join(members))
        if not dry_run:
            for bid in single.remove:
                repo.store.delete(manifest_key(bid))
                log.info("prune removed=%s", bid)
        return PruneResult(single.keep, single.remove, dry_run, damaged, grouped.keep,
                           removed_groups, tuple(unreadable))


def _single_in_scope(m: Manifest, volume: str | None, statefulset: tuple[str, str] | None,
                     unreadable: set[str]) -> bool:
    """Whether prune may judge ``m``, a backup no readable group names."""
    labels = m.labels
    if unreadable and (labels.get("group") in unreadable
                       or ("statefulsetbackup" in labels and "group" not in labels)):
        return False  # it may be a member of a group nobody can read: leave it
    if volume is not None:
        return m.volume == volume
    if statefulset is not None:
        return (labels.get("namespace"), labels.get("statefulset")) == statefulset \
            and "statefulsetbackup" in labels
    return True


def _remove_group(repo: Repository, group_id: str, members: tuple[str, ...]) -> list[str]:
    """The group manifest first, then its members (readable or quarantined): cut short,
    this leaves single backups no group names (restorable one by one, judged by the next
    prune), never a group naming a missing backup."""
    gone = []
    key = groupmanifest.group_key(group_id)
    if repo.store.exists(key):
        repo.store.delete(key)
        gone.append(key)
    for bid in members:
        for k in (manifest_key(bid), quarantine_key(manifest_key(bid))):
            if repo.store.exists(k):
                repo.store.delete(k)
                gone.append(k)
    return gone


def forget(repo: Repository, backup_id: str) -> ForgetResult:
    """Remove one backup: its manifest (readable, damaged or quarantined). Its chunks stay
    until the next gc, which deletes those no other backup references. Backups that name it
    as their parent are unaffected: every manifest is complete (format §6.2). A member of a
    group is refused (FailedPrecondition naming the group): alone, it would leave the group
    unrestorable; :func:`forget_group` removes the whole group."""
    with Lock(repo, "exclusive"):
        keys = [k for k in (manifest_key(backup_id), quarantine_key(manifest_key(backup_id)))
                if repo.store.exists(k)]
        if not keys:
            raise NotFound(f"backup {backup_id} not found in {repo.store.describe()}")
        for g in groupmanifest.groups(repo):
            for m in g.members:
                if m.backup_id == backup_id:
                    raise FailedPrecondition(
                        f"backup {backup_id} is member {m.claim} (ordinal {m.ordinal}) of group "
                        f"backup {g.group_id} of StatefulSet {g.namespace}/{g.set_name}: "
                        "forgetting it alone would leave that group unrestorable; forget the "
                        f"whole group (`statehold backup forget --group {g.group_id}`)")
        for key in keys:
            repo.store.delete(key)
        log.info("forget backup=%s removed=%s", backup_id, ",".join(keys))
        return ForgetResult(backup_id, tuple(keys))


def forget_group(repo: Repository, group_id: str) -> ForgetResult:
    """Remove one group backup with every member no other group names. A group manifest
    that does not decode is removed alone (its members, unknown, stay as single backups);
    one of a newer version is refused (FailedPrecondition: upgrade)."""
    with Lock(repo, "exclusive"):
        try:
            g = groupmanifest.load_group(repo, group_id)
        except Corrupt:
            gone = _remove_group(repo, group_id, ())
            log.warning("forget group=%s: it cannot be read; its members stay", group_id)
            return ForgetResult(group_id, tuple(gone))
        others = {bid for o in groupmanifest.groups(repo) if o.group_id != group_id
                  for bid in o.backup_ids}
        gone = _remove_group(repo, group_id, tuple(b for b in g.backup_ids if b not in others))
        log.info("forget group=%s removed=%s", group_id, ",".join(gone))
        return ForgetResult(group_id, tuple(gone))


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
