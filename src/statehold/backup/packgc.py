"""Garbage collection of a version 2 repository: dead packs deleted, sparse packs repacked
(format §11.7). Called by :func:`.collecting.gc` under the exclusive lock.

The mark set lives in a temporary table of the index cache's database, never in RAM.
Order: new packs (repacked blobs, bytes unchanged) before the index objects naming them;
new index objects before the affected old ones are deleted; index objects before their
packs. A crash anywhere leaves every marked chunk findable; a repeated gc finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from statehold.backup import chunkstore
from statehold.backup.chunkindex import ChunkIndex
from statehold.backup.manifest import Manifest
from statehold.backup.packs import (
    INDEX_MAX_ENTRIES,
    PACK_PREFIX,
    Entry,
    PackBuilder,
    encode_index,
    index_key,
    new_index_name,
    pack_id_of,
    pack_key,
)
from statehold.backup.repository import Repository
from statehold.backup.store import BatchingStore
from statehold.errors import Corrupt

log = logging.getLogger("statehold.backup.gc")

SPARSE = 0.5
"""A pack whose live bytes are below this share of its size is repacked."""


@dataclass(frozen=True, slots=True)
class PackGc:
    chunks_total: int
    chunks_referenced: int
    chunks_deleted: int
    bytes_deleted: int
    chunks_in_grace: int
    chunks_kept_unknown: int
    packs_deleted: int
    packs_repacked: int
    index_damaged: dict[str, str]


def _rows(index: ChunkIndex, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
    return index.execute(sql, params)


def _count(index: ChunkIndex, sql: str) -> int:
    value = index.execute(sql)[0][0]
    assert isinstance(value, int)
    return value


def collect(repo: Repository, manifests: list[Manifest], *, unreadable: bool, grace: float, now: float,
            dry_run: bool, fault: Callable[[str], None] | None = None) -> PackGc:
    """Mark, classify packs, repack, rewrite the affected index objects, delete. With
    ``unreadable`` (a manifest cannot be read) or a damaged index object, nothing is
    deleted or repacked: no chunk is provably unreferenced (format §9.1, §11.7). ``fault``
    (tests) is called at 'repacked', 'indexed', 'index-deleted' and 'pack-deleted'."""
    def step(point: str) -> None:
        if fault is not None:
            fault(point)

    chunkstore.known_chunks(repo)  # sync the cache: it is now exactly the repository's index
    index = chunkstore.index_of(repo)
    frozen = unreadable or bool(index.damaged)
    for sql in ("CREATE TEMP TABLE IF NOT EXISTS marked(id BLOB PRIMARY KEY) WITHOUT ROWID",
                "CREATE TEMP TABLE IF NOT EXISTS listed(pack BLOB PRIMARY KEY, size INTEGER, mtime REAL) "
                "WITHOUT ROWID",
                "CREATE TEMP TABLE IF NOT EXISTS chosen(id BLOB PRIMARY KEY, pack BLOB) WITHOUT ROWID",
                "DELETE FROM marked", "DELETE FROM listed", "DELETE FROM chosen"):
        index.execute(sql)
    for m in manifests:
        index.executemany("INSERT OR IGNORE INTO marked VALUES (?)", ((cid,) for cid in m.chunk_ids()))
    listed: list[tuple[object, ...]] = []
    for info in repo.store.list(PACK_PREFIX):
        try:
            listed.append((pack_id_of(info.key), info.size, info.mtime))
        except Corrupt:
            continue
    index.executemany("INSERT OR REPLACE INTO listed VALUES (?,?,?)", listed)
    index.execute("INSERT INTO chosen SELECT c.id, MIN(c.pack) FROM chunks c JOIN marked m ON m.id = c.id "
                  "JOIN listed l ON l.pack = c.pack GROUP BY c.id")
    live = {p: n if isinstance(n, int) else 0 for p, n in _rows(index, """
        SELECT x.pack, SUM(c.len) FROM chosen x
        JOIN (SELECT id, pack, MIN(len) AS len FROM chunks GROUP BY id, pack) c
          ON c.id = x.id AND c.pack = x.pack GROUP BY x.pack""")}
    indexed = {p for (p,) in _rows(index, "SELECT DISTINCT pack FROM chunks")}
    total = _count(index, "SELECT count(DISTINCT id) FROM chunks")
    referenced = _count(index, "SELECT count(*) FROM marked")

    dead: list[tuple[bytes, int]] = []
    sparse: list[tuple[bytes, int]] = []
    orphans: list[tuple[bytes, int]] = []
    for pack, size, mtime in listed:
        assert isinstance(pack, bytes) and isinstance(size, int) and isinstance(mtime, float)
        if now - mtime < grace:
            continue
        if pack not in indexed:
            orphans.append((pack, size))
        elif live.get(pack, 0) == 0:
            dead.append((pack, size))
        elif live[pack] < SPARSE * size:
            sparse.append((pack, size))
    removed = {p for p, _ in dead} | {p for p, _ in sparse}
    unref = _count(index, "SELECT count(DISTINCT c.id) FROM chunks c LEFT JOIN marked m ON m.id = c.id "
                             "WHERE m.id IS NULL")
    young_unref = index.execute(
        "SELECT count(DISTINCT c.id) FROM chunks c JOIN listed l ON l.pack = c.pack "
        "LEFT JOIN marked m ON m.id = c.id WHERE m.id IS NULL AND l.mtime > ?", (now - grace,))[0][0]
    in_grace = 0 if frozen or not isinstance(young_unref, int) else young_unref
    if frozen or dry_run:
        freed = 0 if frozen else sum(s for _, s in dead + sparse + orphans)
        return PackGc(total, referenced, 0 if frozen else unref, freed, in_grace, unref if frozen else 0,
                      0 if frozen else len(dead) + len(orphans), 0 if frozen else len(sparse),
                      dict(index.damaged))

    new_entries, written = _repack(repo, index, [p for p, _ in sparse])
    step("repacked")
    affected = sorted({str(n) for (n,) in _affected(index, removed)})
    keep: list[Entry] = []
    names: list[str] = []

    def put_index(entries: list[Entry]) -> None:
        name = new_index_name()
        repo.put_blob(index_key(name), encode_index(entries))
        index.add(name, (e.row() for e in entries))
        names.append(name)

    for name in affected:
        for e in index.rows_of(name):
            if e.pack not in removed:
                keep.append(e)
                if len(keep) >= INDEX_MAX_ENTRIES:
                    put_index(keep)
                    keep = []
    keep.extend(new_entries)
    for start in range(0, len(keep), INDEX_MAX_ENTRIES):
        put_index(keep[start : start + INDEX_MAX_ENTRIES])
    step("indexed")
    for name in affected:  # the new index is in place: the old objects may go
        repo.store.delete(index_key(name))
        index.drop(name)
        step("index-deleted")
    for pack, _size in dead + sparse + orphans:  # no index object names them any more
        repo.store.delete(pack_key(pack))
        step("pack-deleted")
    after = _count(index, "SELECT count(DISTINCT id) FROM chunks")
    freed = sum(s for _, s in dead + sparse + orphans) - written
    log.info("gc packs deleted=%d repacked=%d orphans=%d index objects rewritten=%d -> %d freed=%d",
             len(dead), len(sparse), len(orphans), len(affected), len(names), freed)
    return PackGc(total, referenced, total - after, freed, in_grace, 0, len(dead) + len(orphans),
                  len(sparse), {})


def _affected(index: ChunkIndex, removed: set[bytes]) -> list[tuple[object, ...]]:
    index.execute("CREATE TEMP TABLE IF NOT EXISTS removed(pack BLOB PRIMARY KEY) WITHOUT ROWID")
    index.execute("DELETE FROM removed")
    index.executemany("INSERT OR IGNORE INTO removed VALUES (?)", ((p,) for p in removed))
    return index.execute("SELECT DISTINCT i.name FROM chunks c JOIN indexes i ON i.idx = c.idx "
                         "JOIN removed r ON r.pack = c.pack")


def _repack(repo: Repository, index: ChunkIndex, packs: list[bytes]) -> tuple[list[Entry], int]:
    """Copy the chosen copies of the marked chunks of ``packs`` into new packs, blob bytes
    unchanged (format §11.2); returns their entries and bytes once every one is stored."""
    pack_size = repo.config.pack_size or 16 << 20
    batching = repo.store if isinstance(repo.store, BatchingStore) else None
    out: list[Entry] = []
    written = 0
    builder = PackBuilder(repo.codec)

    def seal() -> None:
        nonlocal builder, written
        if not len(builder):
            return
        data, entries = builder.seal()
        if batching is not None:
            batching.put_later(pack_key(builder.pid), data)
        else:
            repo.store.put(pack_key(builder.pid), data)
        out.extend(entries)
        written += len(data)
        builder = PackBuilder(repo.codec)

    for pack in packs:
        rows = index.execute("SELECT c.id, MIN(c.off), c.len FROM chosen x JOIN chunks c "
                             "ON c.id = x.id AND c.pack = x.pack WHERE x.pack = ? GROUP BY c.id "
                             "ORDER BY MIN(c.off)", (pack,))
        if not rows:
            continue
        data = repo.store.get(pack_key(pack))
        for cid, off, length in rows:
            assert isinstance(cid, bytes) and isinstance(off, int) and isinstance(length, int)
            blob = data[off : off + length]
            builder.add(cid, blob)
            if builder.size >= pack_size:
                seal()
    seal()
    if batching is not None:
        batching.commit()  # new packs durable and visible before an index names them
    return out, written
