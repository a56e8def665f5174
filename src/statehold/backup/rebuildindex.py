"""Repairs of a version 2 repository's index (format §11.7): rebuilding it from the pack
headers, and dropping the entries of damaged chunk blobs.

**Rebuild** (``statehold backup rebuild-index``). A pack is self-describing: its encrypted
header names every chunk blob in it (format §11.2). When index objects are lost or damaged,
their chunks cannot be found (a restore fails NotFound naming the chunk) although every
byte is still stored. Under the exclusive lock, rebuild reads the header of every pack no
index object names (every pack with ``all_packs``), reads and re-hashes each blob the header
lists, and puts index objects for the intact ones. A pack's entries always go into one
index object, so a killed rebuild leaves every pack either indexed in full (by an object
whose put returned) or not at all, and a rerun reads only the rest. When every pack it read
had a readable header, it then moves the damaged index objects to ``quarantine/`` (they
are redundant: every listed pack is indexed now), which lets gc collect again.

**Unindex** (``verify --deep --quarantine``). One blob of a pack cannot be moved aside
alone; instead the index entries placing the damaged copy are dropped: each index object
naming it is rewritten without those entries (the new object put before the old one is
deleted, as gc does), so the chunk is no longer known, the next backup that reads the same
data stores it again, and every backup naming it is whole again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from statehold.backup import chunkstore
from statehold.backup.chunkindex import ChunkIndex
from statehold.backup.locks import Lock
from statehold.backup.packs import (
    INDEX_MAX_ENTRIES,
    PACK_PREFIX,
    Entry,
    blob_key,
    decode_index,
    encode_index,
    index_key,
    new_index_name,
    pack_id_of,
)
from statehold.backup.repository import Repository
from statehold.backup.sampling import blob_ranges, read_header
from statehold.backup.store import ObjectInfo
from statehold.errors import Corrupt, FailedPrecondition, NotFound

log = logging.getLogger("statehold.backup.rebuildindex")

Progress = Callable[[int, int], None]
"""progress(stored bytes of the packs read so far, of all packs to read)."""
FaultHook = Callable[[str], None]
"""fault(point), tests: 'pack-read' after each pack, 'index-stored' after each index put."""


@dataclass(frozen=True, slots=True)
class DamagedBlob:
    """A chunk blob a pack's header lists that does not authenticate or re-hash to its id."""

    chunk: str
    pack: str
    detail: str


@dataclass(frozen=True, slots=True)
class RebuildResult:
    packs_listed: int
    packs_read: int
    """Packs whose header this run read (unindexed ones, or all with ``all_packs``)."""
    bytes_read: int
    """Bytes of chunk blobs read and checked before they were indexed (headers aside: two
    small ranged reads per pack)."""
    entries_added: int
    """Index entries put (intact blobs not yet indexed at that place)."""
    index_objects: int
    """Index objects put."""
    damaged_packs: dict[str, str] = field(default_factory=dict)
    """Packs whose header cannot be read (key -> why): skipped, their chunks stay unfound."""
    damaged_blobs: list[DamagedBlob] = field(default_factory=list)
    """Blobs left out of the index (their chunks stay unfound until a backup stores them)."""
    index_quarantined: list[str] = field(default_factory=list)
    """Damaged index objects moved to ``quarantine/`` (redundant after the rebuild)."""
    index_kept: dict[str, str] = field(default_factory=dict)
    """Index objects that cannot be read and were left in place (key -> why): of a newer
    version, or damaged while a pack header could not be read."""

    @property
    def ok(self) -> bool:
        """True when everything read was intact and no unreadable index object remains."""
        return not (self.damaged_packs or self.damaged_blobs or self.index_kept)


def put_index_object(repo: Repository, index: ChunkIndex, entries: list[Entry]) -> str:
    """Put one index object holding ``entries``, then record it in the cache: only after its
    put returned (format §11.4). Returns its name."""
    name = new_index_name()
    repo.put_blob(index_key(name), encode_index(entries))
    index.add(name, (e.row() for e in entries))
    return name


def _scratch_tables(index: ChunkIndex) -> None:
    for sql in ("CREATE TEMP TABLE IF NOT EXISTS rb_listed(pack BLOB PRIMARY KEY, key TEXT, size INTEGER) "
                "WITHOUT ROWID",
                "CREATE TEMP TABLE IF NOT EXISTS rb_indexed(pack BLOB PRIMARY KEY) WITHOUT ROWID",
                "CREATE TEMP TABLE IF NOT EXISTS rb_todo(key TEXT PRIMARY KEY, size INTEGER) WITHOUT ROWID",
                "DELETE FROM rb_listed", "DELETE FROM rb_indexed", "DELETE FROM rb_todo"):
        index.execute(sql)


def _list_packs(repo: Repository, index: ChunkIndex, every: bool,
                damaged: dict[str, str]) -> tuple[int, int, int]:
    """Fill the on-disk table ``rb_todo`` with the packs to read: unindexed ones, or all
    with ``every`` (never a set of every pack in memory). Returns how many packs are
    listed, how many are to read, and their stored bytes."""
    _scratch_tables(index)
    listed = 0
    batch: list[tuple[object, ...]] = []
    for info in repo.store.list(PACK_PREFIX):
        try:
            pid = pack_id_of(info.key)
        except Corrupt as exc:
            damaged[info.key] = str(exc)
            continue
        listed += 1
        batch.append((pid, info.key, info.size))
        if len(batch) >= 4096:
            index.executemany("INSERT OR REPLACE INTO rb_listed VALUES (?,?,?)", batch)
            batch = []
    index.executemany("INSERT OR REPLACE INTO rb_listed VALUES (?,?,?)", batch)
    if every:
        index.execute("INSERT INTO rb_todo SELECT key, size FROM rb_listed")
    else:
        index.execute("INSERT OR IGNORE INTO rb_indexed SELECT DISTINCT pack FROM chunks")
        index.execute("INSERT INTO rb_todo SELECT l.key, l.size FROM rb_listed l "
                      "LEFT JOIN rb_indexed x ON x.pack = l.pack WHERE x.pack IS NULL")
    count, size = index.execute("SELECT count(*), coalesce(sum(size), 0) FROM rb_todo")[0]
    assert isinstance(count, int) and isinstance(size, int)
    return listed, count, size


def _todo(index: ChunkIndex, page: int) -> Iterator[list[ObjectInfo]]:
    """The packs to read, ``page`` at a time, in key order."""
    after = ""
    while rows := index.execute("SELECT key, size FROM rb_todo WHERE key > ? ORDER BY key LIMIT ?",
                                (after, page)):
        out = []
        for key, size in rows:
            assert isinstance(key, str) and isinstance(size, int)
            out.append(ObjectInfo(key, size, 0.0))
        after = out[-1].key
        yield out


def _indexed_at(index: ChunkIndex, e: Entry) -> bool:
    return bool(index.execute("SELECT 1 FROM chunks WHERE id=? AND pack=? AND off=? AND len=? LIMIT 1",
                              (e.cid, e.pack, e.offset, e.length)))


@dataclass(slots=True)
class _PackRead:
    intact: list[Entry]
    """Entries to add: blobs intact and not yet indexed at that place."""
    bad: list[DamagedBlob]
    why: str
    """Why the header cannot be read ('' when it can)."""
    fetched: int


def _read_pack(repo: Repository, index: ChunkIndex, info: ObjectInfo, *, known: bool) -> _PackRead:
    """Read one pack's header and the blobs of the entries to add. ``known``: some of its
    entries may be indexed already (every pack is read): only the others are read and
    added, so a repeated rebuild adds nothing and a healthy pack costs two small reads."""
    try:
        entries = read_header(repo, info.key, info.size)
    except (Corrupt, NotFound) as exc:
        return _PackRead([], [], f"{info.key}: {exc}" if isinstance(exc, NotFound) else str(exc), 0)
    if known:
        entries = [e for e in entries if not _indexed_at(index, e)]
    out = _PackRead([], [], "", 0)
    for start, end, group in blob_ranges(entries):
        try:
            data = memoryview(repo.store.get_range(info.key, start, end - start))
        except NotFound:
            return _PackRead([], [], f"{info.key}: vanished while it was read", out.fetched)
        out.fetched += len(data)
        for e in group:
            blob = bytes(data[e.offset - start : e.offset - start + e.length])
            try:
                if len(blob) != e.length:
                    raise Corrupt(f"chunk {e.cid.hex()}: the pack is shorter than its header says")
                got = repo.codec.chunk_id(repo.codec.decode(blob_key(e.cid), blob))
                if got != e.cid:
                    raise Corrupt(f"chunk {e.cid.hex()}: content does not match its id (got {got.hex()})")
            except Corrupt as exc:
                out.bad.append(DamagedBlob(e.cid.hex(), info.key, str(exc)))
                continue
            out.intact.append(e)
    return out


def rebuild_index(repo: Repository, *, all_packs: bool = False, parallel: int = 8,
                  progress: Progress | None = None, fault: FaultHook | None = None,
                  index_every: int = INDEX_MAX_ENTRIES) -> RebuildResult:
    """Rebuild ``repo``'s index from its pack headers (format §11.7, Rebuild), under the
    exclusive lock (Aborted while anything else holds the repository). Reads every pack
    when ``all_packs`` or while an index object cannot be read (which packs it named
    cannot be known). ``index_every``: entries per index object put (a pack's entries are
    never split across two, so one object may exceed it by one pack)."""
    if not chunkstore.packed(repo):
        raise FailedPrecondition(f"{repo.store.describe()} is a format 1 repository: it has no "
                                 "index to rebuild (every chunk is its own object)")
    with Lock(repo, "exclusive"):
        chunkstore.known_chunks(repo)  # the cache is now exactly the readable index
        index = chunkstore.index_of(repo)
        unreadable = dict(index.damaged)
        every = all_packs or bool(unreadable)
        damaged_packs: dict[str, str] = {}
        listed, count, total = _list_packs(repo, index, every, damaged_packs)
        if progress is not None:
            progress(0, total)
        done = fetched = added = 0
        header_failed = False
        damaged_blobs: list[DamagedBlob] = []
        pending: list[Entry] = []
        names: list[str] = []

        def flush() -> None:
            nonlocal pending
            if pending:
                names.append(put_index_object(repo, index, pending))
                pending = []
                if fault is not None:
                    fault("index-stored")

        def read(info: ObjectInfo) -> _PackRead:
            return _read_pack(repo, index, info, known=every)

        with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="rebuild-index") as pool:
            for batch in _todo(index, 4 * max(1, parallel)):  # bounded: not every pack at once
                for info, got in zip(batch, pool.map(read, batch), strict=True):
                    if got.why:
                        header_failed = True
                        damaged_packs[info.key] = got.why
                        log.warning("rebuild-index pack=%s header unreadable, skipped: %s", info.key, got.why)
                    damaged_blobs.extend(got.bad)
                    if got.intact and pending and len(pending) + len(got.intact) > index_every:
                        flush()
                    pending.extend(got.intact)  # one pack's entries: never split across objects
                    added += len(got.intact)
                    done += info.size
                    fetched += got.fetched
                    if progress is not None:
                        progress(done, total)
                    if fault is not None:
                        fault("pack-read")
            flush()
        quarantined, kept = _retire_damaged(repo, unreadable, pack_failed=header_failed)
        log.info("rebuild-index repository=%s packs=%d read=%d entries=%d index objects=%d "
                 "damaged packs=%d blobs=%d index quarantined=%d", repo.config.id, listed, count, added,
                 len(names), len(damaged_packs), len(damaged_blobs), len(quarantined))
        return RebuildResult(listed, count, fetched, added, len(names), damaged_packs, damaged_blobs,
                             quarantined, kept)


def _retire_damaged(repo: Repository, unreadable: dict[str, str], *,
                    pack_failed: bool) -> tuple[list[str], dict[str, str]]:
    """Move the damaged index objects to ``quarantine/`` once every pack is indexed again
    (their entries are then redundant, and while they stay gc deletes nothing, §11.3).
    Kept: those of a newer version (not damaged), and every one while a pack header could
    not be read (gc would otherwise delete that unindexed pack)."""
    moved: list[str] = []
    kept: dict[str, str] = {}
    for key, why in sorted(unreadable.items()):
        try:
            raw = repo.get_blob(key)
            list(islice(decode_index(raw, key), 1))
        except NotFound:
            continue  # gone meanwhile
        except FailedPrecondition as exc:
            kept[key] = str(exc)
            continue
        except Corrupt:
            pass
        else:
            continue  # reads correctly now (a transient failure at sync): nothing to retire
        if pack_failed:
            kept[key] = why
            continue
        moved.append(repo.quarantine(key))
    return moved, kept


# -- unindex: damaged blobs (verify --deep --quarantine) -------------------------------------

def drop_entries(repo: Repository, damaged: Iterable[Entry]) -> dict[bytes, list[str]]:
    """Rewrite every index object that places a chunk at one of the ``damaged`` locations
    without those entries (caller holds the exclusive lock and synced the cache). The new
    objects are put (and recorded in the cache) before the old ones are deleted: a crash in
    between leaves entries indexed twice, never a good entry unindexed. Returns, per chunk
    id, the index objects its damaged entry was dropped from."""
    index = chunkstore.index_of(repo)
    bad = {(e.cid, e.pack, e.offset, e.length) for e in damaged}
    affected: dict[str, list[bytes]] = {}
    for cid, pack, off, length in sorted(bad):
        for (name,) in index.execute(
                "SELECT i.name FROM chunks c JOIN indexes i ON i.idx = c.idx "
                "WHERE c.id=? AND c.pack=? AND c.off=? AND c.len=?", (cid, pack, off, length)):
            assert isinstance(name, str)
            affected.setdefault(name, []).append(cid)
    out: dict[bytes, list[str]] = {}
    for name, cids in sorted(affected.items()):
        key = index_key(name)
        # from the object itself, not the cache: the cache keeps one row per (chunk, object),
        # an object may name two copies of a chunk, and the other copy may be the good one
        keep = [Entry(c, p, o, n) for c, p, o, n in decode_index(repo.get_blob(key), key)
                if (c, p, o, n) not in bad]
        for start in range(0, len(keep), INDEX_MAX_ENTRIES):
            put_index_object(repo, index, keep[start : start + INDEX_MAX_ENTRIES])
        repo.store.delete(key)
        index.drop(name)
        log.warning("index object %s rewritten without %d damaged entries", name, len(cids))
        for cid in cids:
            out.setdefault(cid, []).append(key)
    return out
