"""The pool's own database: ``<pool>/.statehold/meta.db`` (SQLite, WAL, synchronous=FULL).

One file per pool, inside the pool filesystem, so a pool moved to another host carries its
metadata. Every state change is a short transaction; an operation that touches files first
records an *intent* row, acts, then deletes the intent in the same transaction that records
the result (see docs/design/pool-metadata.md). sqlite3 errors are wrapped in Corrupt or
Unavailable here and never leak.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statehold.errors import Corrupt, FailedPrecondition, Unavailable

SCHEMA_VERSION = 2
"""The newest schema this build reads. A pool's database records the oldest version that
describes it: 1 for the ``file`` layout (every pool made before layouts existed, and every
``file`` pool made now, so older builds keep reading them), 2 for the ``subvolume``
layout, whose directories a version-1 reader would mistake for backing files: it refuses
the pool instead (``meta.schema_version`` > what it reads)."""

LAYOUT_FILE = "file"
LAYOUT_SUBVOLUME = "subvolume"
LAYOUT_SCHEMA = {LAYOUT_FILE: 1, LAYOUT_SUBVOLUME: 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pools (
    name                TEXT PRIMARY KEY,
    uuid                TEXT NOT NULL,
    fs                  TEXT NOT NULL,
    profile             TEXT NOT NULL,
    overprovision_ratio REAL NOT NULL,
    spec                TEXT NOT NULL,
    created_at          REAL NOT NULL,
    layout              TEXT NOT NULL DEFAULT 'file'
);
CREATE TABLE IF NOT EXISTS volumes (
    name         TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    mode         TEXT NOT NULL,
    fs           TEXT,
    source_kind  TEXT,
    source_name  TEXT,
    formatted    INTEGER NOT NULL DEFAULT 0,
    grow_pending INTEGER NOT NULL DEFAULT 0,
    labels       TEXT NOT NULL DEFAULT '{}',
    created_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    name          TEXT PRIMARY KEY,
    source_volume TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mode          TEXT NOT NULL,
    fs            TEXT,
    formatted     INTEGER NOT NULL DEFAULT 0,
    frozen        INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    op         TEXT NOT NULL,
    target     TEXT NOT NULL,
    payload    TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class PoolRecord:
    name: str
    uuid: str
    fs: str
    profile: str
    overprovision_ratio: float
    spec: dict[str, Any]
    created_at: float
    layout: str = LAYOUT_FILE
    """Where volumes live (``file`` or ``subvolume``, :mod:`statehold.engine.layouts`);
    fixed when the pool is made. A database made before layouts existed has no column for
    it: ``file``."""


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    name: str
    size: int
    mode: str
    fs: str | None
    source_kind: str | None
    source_name: str | None
    formatted: bool
    grow_pending: bool
    labels: dict[str, str]
    created_at: float


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    name: str
    source_volume: str
    size: int
    mode: str
    fs: str | None
    formatted: bool
    frozen: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class Intent:
    id: int
    op: str
    target: str
    payload: dict[str, Any]
    created_at: float


class Metadata:
    """A connection to one pool's database, safe to share between threads (one lock)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.exists():
            raise FailedPrecondition(f"no pool metadata at {path}")
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if create:
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(LAYOUT_SCHEMA[LAYOUT_FILE]),),
                )
            version = self._scalar("SELECT value FROM meta WHERE key='schema_version'")
        except sqlite3.DatabaseError as exc:
            raise Corrupt(f"pool metadata {path} is unreadable: {exc}") from exc
        if version is None or int(version) > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"pool metadata {path} has schema version {version}; this build reads "
                f"up to {SCHEMA_VERSION}"
            )

    # -- plumbing -------------------------------------------------------------------------
    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); sqlite errors become Unavailable."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Unavailable(f"pool metadata {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise Unavailable(f"pool metadata {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- pool ------------------------------------------------------------------------------
    def init_pool(self, rec: PoolRecord) -> None:
        """Record the pool (once, in a new database); a ``subvolume`` pool also raises the
        schema version to 2 in the same transaction, so older builds refuse it."""
        if rec.layout not in LAYOUT_SCHEMA:
            raise FailedPrecondition(f"unknown pool layout {rec.layout!r}")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO pools(name, uuid, fs, profile, overprovision_ratio, spec, created_at,"
                " layout) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.name, rec.uuid, rec.fs, rec.profile, rec.overprovision_ratio,
                 json.dumps(rec.spec, sort_keys=True), rec.created_at, rec.layout),
            )
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                       (str(LAYOUT_SCHEMA[rec.layout]),))

    def pool(self) -> PoolRecord:
        rows = self._query("SELECT * FROM pools")
        if len(rows) != 1:
            raise Corrupt(f"pool metadata {self.path} holds {len(rows)} pool rows, expected 1")
        r = rows[0]
        layout = r["layout"] if "layout" in r.keys() else LAYOUT_FILE  # noqa: SIM118 (a Row)
        if layout not in LAYOUT_SCHEMA:
            raise Corrupt(f"pool metadata {self.path} names an unknown layout {layout!r}")
        return PoolRecord(r["name"], r["uuid"], r["fs"], r["profile"],
                          float(r["overprovision_ratio"]), json.loads(r["spec"]),
                          float(r["created_at"]), layout)

    def rename_pool(self, new_name: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE pools SET name=?", (new_name,))

    def set_overprovision_ratio(self, ratio: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE pools SET overprovision_ratio=?", (ratio,))

    # -- volumes ---------------------------------------------------------------------------
    @staticmethod
    def _volume(r: sqlite3.Row) -> VolumeRecord:
        return VolumeRecord(r["name"], int(r["size"]), r["mode"], r["fs"], r["source_kind"],
                            r["source_name"], bool(r["formatted"]), bool(r["grow_pending"]),
                            json.loads(r["labels"]), float(r["created_at"]))

    def volume(self, name: str) -> VolumeRecord | None:
        rows = self._query("SELECT * FROM volumes WHERE name=?", (name,))
        return self._volume(rows[0]) if rows else None

    def volumes(self) -> list[VolumeRecord]:
        return [self._volume(r) for r in self._query("SELECT * FROM volumes ORDER BY name")]

    def provisioned(self) -> int:
        rows = self._query("SELECT COALESCE(SUM(size), 0) FROM volumes")
        return int(rows[0][0])

    @staticmethod
    def insert_volume(db: sqlite3.Connection, v: VolumeRecord) -> None:
        db.execute(
            "INSERT INTO volumes(name, size, mode, fs, source_kind, source_name, formatted,"
            " grow_pending, labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (v.name, v.size, v.mode, v.fs, v.source_kind, v.source_name, int(v.formatted),
             int(v.grow_pending), json.dumps(v.labels, sort_keys=True), v.created_at),
        )

    def set_volume_flags(self, name: str, *, formatted: bool | None = None,
                         grow_pending: bool | None = None) -> None:
        with self.transaction() as db:
            if formatted is not None:
                db.execute("UPDATE volumes SET formatted=? WHERE name=?", (int(formatted), name))
            if grow_pending is not None:
                db.execute("UPDATE volumes SET grow_pending=? WHERE name=?",
                           (int(grow_pending), name))

    # -- snapshots -------------------------------------------------------------------------
    @staticmethod
    def _snapshot(r: sqlite3.Row) -> SnapshotRecord:
        return SnapshotRecord(r["name"], r["source_volume"], int(r["size"]), r["mode"], r["fs"],
                              bool(r["formatted"]), bool(r["frozen"]), float(r["created_at"]))

    def snapshot(self, name: str) -> SnapshotRecord | None:
        rows = self._query("SELECT * FROM snapshots WHERE name=?", (name,))
        return self._snapshot(rows[0]) if rows else None

    def snapshots(self, volume: str | None = None) -> list[SnapshotRecord]:
        if volume is None:
            rows = self._query("SELECT * FROM snapshots ORDER BY created_at, name")
        else:
            rows = self._query(
                "SELECT * FROM snapshots WHERE source_volume=? ORDER BY created_at, name",
                (volume,))
        return [self._snapshot(r) for r in rows]

    @staticmethod
    def insert_snapshot(db: sqlite3.Connection, s: SnapshotRecord) -> None:
        db.execute(
            "INSERT INTO snapshots(name, source_volume, size, mode, fs, formatted, frozen,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (s.name, s.source_volume, s.size, s.mode, s.fs, int(s.formatted), int(s.frozen),
             s.created_at),
        )

    # -- intents ---------------------------------------------------------------------------
    def begin_intent(self, op: str, target: str, payload: dict[str, Any]) -> int:
        """Record (durably) that ``op`` on ``target`` is about to change files."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO intents(op, target, payload, created_at) VALUES (?, ?, ?, ?)",
                (op, target, json.dumps(payload, sort_keys=True), time.time()),
            )
            return int(cur.lastrowid or 0)

    def intents(self) -> list[Intent]:
        return [
            Intent(int(r["id"]), r["op"], r["target"], json.loads(r["payload"]),
                   float(r["created_at"]))
            for r in self._query("SELECT * FROM intents ORDER BY id")
        ]

    @staticmethod
    def end_intent(db: sqlite3.Connection, intent_id: int) -> None:
        db.execute("DELETE FROM intents WHERE id=?", (intent_id,))
