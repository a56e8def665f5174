"""Backing up an image file (a volume snapshot): full, or incremental against a parent.

Incremental: the parent backup's manifest lists the chunks of the parent snapshot; the
engine's changed-extent diff tells which byte ranges of the new snapshot may differ. Only
chunks touching those ranges are read; every other entry is copied from the parent
manifest. So read and upload cost follows the changed bytes, not the volume size. The
result is still a complete manifest (format §6.2): restore never walks a chain.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from array import array
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path

from statehold.backup import chunkstore, extents
from statehold.backup.locks import Lock
from statehold.backup.manifest import Manifest, Stats
from statehold.backup.pipeline import COMMIT_EVERY, FaultHook, Progress, run_pipeline
from statehold.backup.repository import Repository, new_backup_id
from statehold.errors import InvalidArgument, NotFound

log = logging.getLogger("statehold.backup")


@dataclass(frozen=True, slots=True)
class Parent:
    """The previous backup of the same volume and the snapshot file it was read from."""

    manifest: Manifest
    path: Path


@dataclass(frozen=True, slots=True)
class Plan:
    read: list[int]
    """Chunk indices to read, ascending."""
    copied: dict[int, bytes]
    """Chunk index -> id taken from the parent manifest unread."""


def plan(size: int, chunk_size: int, data: list[tuple[int, int]],
         changed: list[tuple[int, int]] | None, parent: Manifest | None) -> Plan:
    """Which chunks to read and which to copy from the parent (pure, unit-tested).

    ``data``: data ranges of the new image; ``changed``: ranges that may differ from the
    parent's image (None: no usable parent, back up in full).
    """
    with_data = {i for i in extents.chunks_touching(data, chunk_size) if i * chunk_size < size}
    if parent is None or changed is None:
        return Plan(sorted(with_data), {})
    touched = extents.chunks_touching(changed, chunk_size)
    if parent.size != size:
        # the chunks holding either end change length, so their ids change too
        for end in (parent.size, size):
            touched.add(end // chunk_size)
            if end % chunk_size == 0 and end:
                touched.add(end // chunk_size - 1)
    copied = {}
    for off, cid in parent.entries():
        idx = off // chunk_size
        if off < size and idx not in touched:
            copied[idx] = cid
    # An untouched chunk holds what it held in the parent snapshot: the parent's entry, or
    # zeros when the parent has none (zero chunks are never listed: written zeros are data
    # to SEEK_DATA but need no read). Only touched chunks with data are read.
    return Plan(sorted(i for i in with_data if i in touched), copied)


def keep_only_stored(p: Plan, known: Container[bytes]) -> Plan:
    """Copy from the parent only entries whose chunk is in the store now (listed under the
    lock, so gc cannot take it before the manifest names it); read the others again. A
    chunk the parent names can be gone: quarantined as damaged, or collected after the
    parent was pruned or forgotten between parent choice and the lock. Reading it again
    stores it again, which also mends every older backup that names the same id."""
    here = chunkstore.stored(known, p.copied.values())
    lost = [i for i, cid in p.copied.items() if cid not in here]
    if not lost:
        return p
    log.warning("backup parent names %d chunks no longer stored: reading them again", len(lost))
    return Plan(sorted({*p.read, *lost}), {i: c for i, c in p.copied.items() if c in here})


def create_backup(repo: Repository, image: Path, *, volume: str, parent: Parent | None = None,
                  snapshot: str | None = None, labels: Mapping[str, str] | None = None,
                  workers: int | None = None, progress: Progress | None = None,
                  fault: FaultHook | None = None, lock_ttl: float = 30 * 60.0,
                  commit_every: int = COMMIT_EVERY, origin: str = "", uploads: int = 4) -> Manifest:
    """Back up ``image`` (a snapshot's backing file) and return the committed manifest
    (``origin``: who asked for it, recorded for retention, format §6.2; ``uploads``: format
    2 packs being put at once)."""
    if not volume:
        raise InvalidArgument("a backup needs the volume name it belongs to")
    cs = repo.chunk_size
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"image {image} does not exist") from exc
    except OSError as exc:
        raise InvalidArgument(f"image {image}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        with Lock(repo, "shared", ttl=lock_ttl) as lock:
            known = chunkstore.known_chunks(repo)  # after the lock: gc cannot remove them now
            usable = parent if parent is not None and _usable(parent, cs, volume) else None
            changed = extents.changed_ranges(usable.path, image) if usable is not None else None
            p = keep_only_stored(plan(size, cs, extents.data_ranges(image), changed,
                                      usable.manifest if usable is not None else None), known)
            total = sum(min(cs, size - i * cs) for i in p.read)
            if progress is not None:
                progress(0, total)
            # CPU-bound stages want ~2 threads per core; a remote store wants enough requests
            # in flight to hide its latency (the store says how many it can take)
            nworkers = workers or max(4, 2 * (os.cpu_count() or 2), getattr(repo.store, "parallelism", 0))
            sink = chunkstore.open_sink(repo, known, commit_every=commit_every, fault=fault, uploads=uploads)
            try:
                res = run_pipeline(repo, fd, size, p.read, total=total, sink=sink, workers=nworkers,
                                   progress=progress, fault=fault)
                sink.finish()  # every chunk stored and findable before the manifest (format §7, §11.5)
            finally:
                sink.close()
            ids = dict(p.copied)
            ids.update(res.ids)
            offsets: array[int] = array("Q")
            blob = bytearray()
            for idx in sorted(ids):
                offsets.append(idx * cs)
                blob += ids[idx]
            m = Manifest(
                backup_id=new_backup_id(), volume=volume, size=size, chunk_size=cs, created=time.time(),
                offsets=offsets, ids=bytes(blob), parent=usable.manifest.backup_id if usable else None,
                snapshot=snapshot, host=socket.gethostname(), labels=dict(labels or {}),
                stats=Stats(bytes_read=res.bytes_read, bytes_new=res.bytes_new, stored_new=res.stored_new,
                            chunks=len(offsets), chunks_new=res.chunks_new),
                origin=origin,
            )
            if fault is not None:
                fault("before-manifest")
            lock.check_alive()
            repo.save_manifest(m)  # the commit point: chunks are all stored (format §7)
            log.info("backup id=%s volume=%s size=%d read=%d new=%d chunks=%d", m.backup_id, volume,
                     size, res.bytes_read, res.bytes_new, len(offsets))
            return m
    finally:
        os.close(fd)


def _usable(parent: Parent, chunk_size: int, volume: str) -> bool:
    m = parent.manifest
    ok = m.kind == "image" and m.chunk_size == chunk_size and m.volume == volume and parent.path.exists()
    if not ok:
        log.info("backup volume=%s parent=%s unusable: full backup", volume, m.backup_id)
    return ok


def latest_backup(repo: Repository, volume: str) -> Manifest | None:
    """The newest backup of ``volume`` (candidates for the next incremental's parent)."""
    found = [m for m in repo.manifests() if m.volume == volume and m.kind == "image"]
    return max(found, key=lambda m: (m.created, m.backup_id)) if found else None
