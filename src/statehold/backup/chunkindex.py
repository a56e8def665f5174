"""The local, on-disk cache of a version 2 repository's index (format §11.4).

The index (chunk id -> pack, offset, length) is the union of the repository's ``index/``
objects. Holding it in memory would cost ~100 B per chunk (40 GB for 400 M chunks), so it
is kept in an SQLite database on local disk (WAL: several processes of one host share it)
whose page cache is bounded. It is never authoritative: :meth:`ChunkIndex.sync`, run after
every repository lock is taken, makes it exactly the set of index objects listed then;
a missing, damaged or foreign cache is deleted and rebuilt.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from statehold.backup.packs import INDEX_PREFIX, Entry, decode_index, index_key, index_name_of
from statehold.errors import Corrupt, FailedPrecondition, NotFound

if TYPE_CHECKING:
    from statehold.backup.repository import Repository

log = logging.getLogger("statehold.backup.chunkindex")

CACHE_ENV = "STATEHOLD_BACKUP_CACHE"
PAGE_CACHE_KIB = 16 * 1024
_IN_BATCH = 500  # ids per IN (...) query: under SQLite's oldest host-parameter limit (999)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS indexes(idx INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(id BLOB NOT NULL, idx INTEGER NOT NULL, pack BLOB NOT NULL,
    off INTEGER NOT NULL, len INTEGER NOT NULL, PRIMARY KEY (id, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_idx ON chunks(idx);
"""


def default_cache_root() -> Path:
    """``$STATEHOLD_BACKUP_CACHE``, else ``$XDG_CACHE_HOME/statehold/backup``, else
    ``~/.cache/statehold/backup`` (format §11.4)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "statehold" / "backup"


@dataclass(frozen=True, slots=True)
class SyncResult:
    loaded: int
    """Index objects loaded into the cache by this sync."""
    dropped: int
    """Index objects no longer in the repository whose rows were removed."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Index objects that cannot be read: name -> why (their chunks are not found)."""


class ChunkIndex:
    """The cache of one repository's index; safe to use from several threads."""

    def __init__(self, path: Path, repo_id: str) -> None:
        self.path = path
        self.repo_id = repo_id
        self._lock = threading.RLock()
        self.damaged: dict[str, str] = {}
        self.synced = False
        """True once :meth:`sync` ran in this process."""
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning("index cache path=%s unusable (%s): rebuilding it", path, exc)
            self._remove_files()
            self._db = self._connect()

    @classmethod
    def for_repository(cls, repo: Repository, root: Path | None = None) -> ChunkIndex:
        """The cache of ``repo`` under ``root`` (default :func:`default_cache_root`); a fresh
        temporary directory when that cannot be made (correct, only rebuilt every time)."""
        base = root or default_cache_root()
        try:
            where = base / repo.config.id
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = where / ".probe"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            where = Path(tempfile.mkdtemp(prefix="statehold-index-"))
            log.warning("index cache dir %s unusable (%s): using %s", base, exc, where)
        return cls(where / "index.sqlite", repo.config.id)

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, timeout=120, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT v FROM meta WHERE k='repository'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('repository', ?)", (self.repo_id,))
            elif row[0] != self.repo_id:
                raise sqlite3.DatabaseError(f"cache of repository {row[0]}, not {self.repo_id}")
        except BaseException:
            db.close()
            raise
        return db

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reads ------------------------------------------------------------------------------
    def lookup(self, cid: bytes) -> Entry | None:
        """One location of chunk ``cid`` (any copy: every copy is valid, format §11.2)."""
        with self._lock:
            row = self._db.execute("SELECT pack, off, len FROM chunks WHERE id=? LIMIT 1", (cid,)).fetchone()
        return None if row is None else Entry(cid, row[0], row[1], row[2])

    def __contains__(self, cid: object) -> bool:
        if not isinstance(cid, bytes):
            return False
        with self._lock:
            return self._db.execute("SELECT 1 FROM chunks WHERE id=? LIMIT 1", (cid,)).fetchone() is not None

    def present(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` the index holds: one query per ``_IN_BATCH`` ids rather than
        one per id (an incremental backup checks every chunk its parent names, tens of
        thousands, and a query each cost it a tenth of its time)."""
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        with self._lock:
            for i in range(0, len(wanted), _IN_BATCH):
                batch = wanted[i : i + _IN_BATCH]
                marks = ",".join("?" * len(batch))
                found.update(r[0] for r in self._db.execute(
                    f"SELECT DISTINCT id FROM chunks WHERE id IN ({marks})", batch))
        return found

    def names(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM indexes")}

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def rows_of(self, name: str) -> Iterator[Entry]:
        """Every entry the index object ``name`` holds (gc rewrites affected objects)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.pack, c.off, c.len FROM chunks c JOIN indexes i ON c.idx = i.idx "
                "WHERE i.name=?", (name,)).fetchall()
        for cid, pack, off, length in rows:
            yield Entry(cid, pack, off, length)

    def execute(self, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
        """Run one statement on the cache database (gc's on-disk mark table)."""
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    # -- writes -----------------------------------------------------------------------------
    def add(self, name: str, rows: Iterable[tuple[bytes, bytes, int, int]]) -> None:
        """Record index object ``name`` with its rows, in one transaction. Only after its put
        returned (format §11.4): the cache never knows a chunk the repository cannot show."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM indexes WHERE name=?", (name,)).fetchone() is None:
                    cur = db.execute("INSERT INTO indexes(name, n) VALUES (?, 0)", (name,))
                    idx = int(cur.lastrowid or 0)
                    n = 0
                    batch: list[tuple[bytes, int, bytes, int, int]] = []
                    for cid, pack, off, length in rows:
                        batch.append((cid, idx, pack, off, length))
                        if len(batch) >= 4096:
                            db.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?)", batch)
                            n += len(batch)
                            batch = []
                    db.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?)", batch)
                    n += len(batch)
                    db.execute("UPDATE indexes SET n=? WHERE idx=?", (n, idx))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def drop(self, name: str) -> None:
        """Forget index object ``name`` and its rows (it left the repository)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT idx FROM indexes WHERE name=?", (name,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM chunks WHERE idx=?", (row[0],))
                    db.execute("DELETE FROM indexes WHERE idx=?", (row[0],))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def sync(self, repo: Repository, *, parallel: int = 4) -> SyncResult:
        """Make the cache the repository's index as listed now (format §11.4). Call after
        taking a repository lock; index objects are downloaded ``parallel`` at a time,
        one in memory per thread."""
        listed = set()
        damaged: dict[str, str] = {}
        for info in repo.store.list(INDEX_PREFIX):
            try:
                listed.add(index_name_of(info.key))
            except Corrupt as exc:
                damaged[info.key] = str(exc)
        cached = self.names()
        gone = cached - listed
        for name in gone:
            self.drop(name)
        todo = sorted(listed - cached)

        def load(name: str) -> tuple[str, str | None]:
            key = index_key(name)
            try:
                rows = decode_index(repo.get_blob(key), key)  # checked whole, then streamed
            except NotFound:
                return name, None  # removed since the listing (gc)
            except (Corrupt, FailedPrecondition) as exc:
                return name, str(exc)
            self.add(name, rows)  # in batches: one object's bytes in memory, not its rows
            return name, None

        loaded = 0
        if todo:
            with ThreadPoolExecutor(max(1, min(parallel, len(todo))), thread_name_prefix="index") as pool:
                for name, why in pool.map(load, todo):
                    if why is None:
                        loaded += 1
                    else:
                        damaged[index_key(name)] = why
                        log.warning("index object %s unreadable, its chunks are not found: %s", name, why)
        self.damaged = damaged
        self.synced = True
        return SyncResult(loaded, len(gone), dict(damaged))
