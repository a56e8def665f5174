"""Where a repository keeps its chunks, per format version: the one seam backup, restore,
verify and gc go through.

Version 1 (format §2): one ``chunks/`` object per chunk; the known set is a listing.
Version 2 (format §11): chunks in packs, found through the index cache
(:class:`~.chunkindex.ChunkIndex`, on disk). Callers ask for the known set after taking
their lock (:func:`known_chunks`), store new chunks through a sink (:func:`open_sink`),
and read chunks back with :func:`read_chunk` (one) or :mod:`.packreader` (many).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import Protocol

from statehold.backup.chunkindex import ChunkIndex
from statehold.backup.packer import Packer
from statehold.backup.packs import blob_key, chunk_key, pack_key
from statehold.backup.repository import CONFIG_KEY, Repository
from statehold.backup.store import BatchingStore
from statehold.errors import Aborted, Corrupt, NotFound

FaultHook = Callable[[str], None]
COMMIT_EVERY = 256 << 20
"""Publish stored chunks (v1: a batching store's commit; v2: an index object) after this
many stored bytes: a killed backup loses at most this much work."""

_indexes: weakref.WeakKeyDictionary[Repository, ChunkIndex] = weakref.WeakKeyDictionary()
_roots: weakref.WeakKeyDictionary[Repository, Path] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def packed(repo: Repository) -> bool:
    """True for a version 2 repository (chunks in packs)."""
    return getattr(repo.config, "version", 1) >= 2


def use_cache(repo: Repository, root: Path) -> None:
    """Keep ``repo``'s index cache under ``root`` instead of the default (tests, benches,
    an agent with its own state directory)."""
    with _guard:
        _roots[repo] = root
        old = _indexes.pop(repo, None)
    if old is not None:
        old.close()


def index_of(repo: Repository) -> ChunkIndex:
    """The (lazily opened) index cache of a version 2 repository. Not synced: see
    :func:`known_chunks`."""
    with _guard:
        idx = _indexes.get(repo)
        if idx is None:
            idx = _indexes[repo] = ChunkIndex.for_repository(repo, _roots.get(repo))
        return idx


def known_chunks(repo: Repository) -> Container[bytes]:
    """The ids of every chunk stored now (format §7 step 2, §11.5): call only while holding
    a lock. Version 2: the index cache, synced with the repository's index objects."""
    if not packed(repo):
        _still_version_1(repo)
        return repo.known_chunks()
    idx = index_of(repo)
    idx.sync(repo)
    return idx


def stored(known: Container[bytes], ids: Iterable[bytes]) -> set[bytes]:
    """Which of ``ids`` are in ``known`` (what :func:`known_chunks` returned): in bulk
    from the index cache of a version 2 repository, one by one from a version 1 set."""
    if isinstance(known, ChunkIndex):
        return known.present(ids)
    return {cid for cid in ids if cid in known}


def _still_version_1(repo: Repository) -> None:
    """A repository opened as version 1 may have been converted (format §11.9) before this
    lock: writing ``chunks/`` objects into it would make backups nobody can find."""
    try:
        version = int(json.loads(repo.store.get(CONFIG_KEY)).get("version", 1))
    except (NotFound, ValueError, TypeError, AttributeError):
        return  # whatever is wrong with config, opening reported it; nothing new here
    if version >= 2:
        raise Aborted(f"{repo.store.describe()} was converted to format 2 after it was opened; "
                      "run the operation again")


class ChunkSink(Protocol):
    """Where a backup puts the chunks it found new."""

    def claim(self, cid: bytes) -> bool:
        """True when the caller must store ``cid``: not known, and not claimed by another
        worker of this backup (two workers hashing equal chunks store it once)."""
        ...

    def store(self, cid: bytes, blob: bytes) -> None:
        """Store the blob of a claimed chunk (may block: backpressure)."""
        ...

    def finish(self) -> None:
        """Every stored chunk durable and findable: call before putting the manifest."""
        ...

    def close(self) -> None:
        """Stop background work (after finish, or to abandon a failed backup)."""
        ...


class V1Sink:
    """Version 1: one object per chunk; a batching store commits every ``commit_every``."""

    def __init__(self, repo: Repository, known: set[bytes], *, commit_every: int = COMMIT_EVERY) -> None:
        self.repo = repo
        self.known = known
        self.pending: set[bytes] = set()
        self.lock = threading.Lock()
        self.batching = repo.store if isinstance(repo.store, BatchingStore) else None
        self.commit_every = commit_every
        self.since_commit = 0

    def claim(self, cid: bytes) -> bool:
        with self.lock:
            if cid in self.known or cid in self.pending:
                return False
            self.pending.add(cid)
            return True

    def store(self, cid: bytes, blob: bytes) -> None:
        key = chunk_key(cid)
        if self.batching is None:
            self.repo.store.put(key, blob)
        else:
            self.batching.put_later(key, blob)
            with self.lock:
                self.since_commit += len(blob)
                due = self.since_commit >= self.commit_every
                if due:
                    self.since_commit = 0
            if due:
                self.batching.commit()
        with self.lock:
            self.known.add(cid)
            self.pending.discard(cid)

    def finish(self) -> None:
        if self.batching is not None:
            self.batching.commit()

    def close(self) -> None:
        pass


def open_sink(repo: Repository, known: Container[bytes], *, commit_every: int = COMMIT_EVERY,
              fault: FaultHook | None = None, uploads: int = 4) -> ChunkSink:
    """The sink for ``repo``'s format; ``known`` is what :func:`known_chunks` returned."""
    if not packed(repo):
        assert isinstance(known, set)
        return V1Sink(repo, known, commit_every=commit_every)
    return Packer(repo, index_of(repo), index_every=commit_every, fault=fault, uploads=uploads)


def read_chunk(repo: Repository, cid: bytes, length: int) -> bytes:
    """One chunk's plaintext, checked against its id and length (Corrupt otherwise): in a
    version 2 repository one ranged read of its pack (format §4), whose first read in a
    process syncs the index cache (the caller holds a lock: tree restores read chunk by
    chunk); in version 1 its own object."""
    if not packed(repo):
        return repo.read_loose_chunk(cid, length)
    idx = index_of(repo)
    if not idx.synced:
        idx.sync(repo)
    loc = idx.lookup(cid)
    if loc is None:
        raise NotFound(f"chunk {cid.hex()} is not in the index of {repo.store.describe()}")
    key = pack_key(loc.pack)
    try:
        blob = repo.store.get_range(key, loc.offset, loc.length)
    except NotFound:
        raise NotFound(f"chunk {cid.hex()}: its pack {key} is missing from {repo.store.describe()}") from None
    return check_blob(repo, cid, length, blob)


def check_blob(repo: Repository, cid: bytes, length: int, blob: bytes | memoryview) -> bytes:
    """Decode a chunk blob and check its id and length; Corrupt naming the chunk."""
    if len(blob) == 0:
        raise Corrupt(f"chunk {cid.hex()}: its pack is shorter than the index says")
    data = repo.codec.decode(blob_key(cid), bytes(blob))
    got = repo.codec.chunk_id(data)
    if len(data) != length or got != cid:
        raise Corrupt(f"chunk {cid.hex()}: content does not match its id: expected {length} bytes "
                      f"with id {cid.hex()}, got {len(data)} bytes with id {got.hex()}")
    return data


def check_blob_into(repo: Repository, cid: bytes, length: int, blob: memoryview,
                    out: bytearray) -> memoryview:
    """:func:`check_blob` without copies (the restore's hot path): decrypted into ``out``,
    the plaintext a view valid until ``out`` is reused. The id is still recomputed from the
    plaintext (format §4: authentication alone does not prove the manifest's id)."""
    if len(blob) == 0:
        raise Corrupt(f"chunk {cid.hex()}: its pack is shorter than the index says")
    data = repo.codec.decode_into(blob_key(cid), blob, out)
    got = repo.codec.chunk_id(data)
    if len(data) != length or got != cid:
        raise Corrupt(f"chunk {cid.hex()}: content does not match its id: expected {length} bytes "
                      f"with id {cid.hex()}, got {len(data)} bytes with id {got.hex()}")
    return data
