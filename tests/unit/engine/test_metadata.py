"""The pool database: schema, version guard, intents and records (no root needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from statehold.engine.metadata import SCHEMA_VERSION, Metadata, PoolRecord, VolumeRecord
from statehold.engine.steps import STEPS
from statehold.errors import Corrupt, FailedPrecondition


def _db(tmp_path: Path) -> Metadata:
    db = Metadata(tmp_path / "meta.db", create=True)
    db.init_pool(PoolRecord("p", "u-1", "xfs", "single", 10.0, {"name": "p"}, 1.0))
    return db


def _vol(name: str, size: int) -> VolumeRecord:
    return VolumeRecord(name, size, "filesystem", "xfs", None, None, False, False, {"a": "b"}, 2.0)


def test_database_is_wal_and_carries_its_schema_version(tmp_path: Path) -> None:
    """A file pool stays at version 1 (older builds read it); a subvolume pool is at 2."""
    db = _db(tmp_path)
    assert db.pool().layout == "file"
    db.close()
    raw = sqlite3.connect(tmp_path / "meta.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == 1
    raw.close()
    sub = Metadata(tmp_path / "sub.db", create=True)
    sub.init_pool(PoolRecord("s", "u-2", "btrfs", "single", 10.0, {"name": "s"}, 1.0,
                             "subvolume"))
    assert sub.pool().layout == "subvolume"
    sub.close()
    raw = sqlite3.connect(tmp_path / "sub.db")
    version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 2
    raw.close()
    assert Metadata(tmp_path / "sub.db").pool().layout == "subvolume"


def test_a_database_made_before_layouts_reads_as_a_file_pool(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "old.db")
    raw.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE pools (name TEXT PRIMARY KEY, uuid TEXT NOT NULL, fs TEXT NOT NULL,
            profile TEXT NOT NULL, overprovision_ratio REAL NOT NULL, spec TEXT NOT NULL,
            created_at REAL NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO pools VALUES ('old', 'u-0', 'xfs', 'single', 10.0, '{}', 1.0);
    """)
    raw.close()
    assert Metadata(tmp_path / "old.db").pool().layout == "file"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    _db(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "meta.db")
    raw.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(FailedPrecondition, match="schema version"):
        Metadata(tmp_path / "meta.db")


def test_missing_database_is_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition):
        Metadata(tmp_path / "nope.db")


def test_garbage_database_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "meta.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(Corrupt):
        Metadata(tmp_path / "meta.db")


def test_intent_and_result_commit_together(tmp_path: Path) -> None:
    db = _db(tmp_path)
    it = db.begin_intent("create_volume", "v", {"size": 5})
    assert [(i.op, i.target, i.payload) for i in db.intents()] == [("create_volume", "v", {"size": 5})]
    with pytest.raises(RuntimeError), db.transaction() as tx:
        Metadata.insert_volume(tx, _vol("v", 5))
        Metadata.end_intent(tx, it)
        raise RuntimeError("crash inside the transaction")
    assert db.volume("v") is None and len(db.intents()) == 1  # rolled back as a whole
    with db.transaction() as tx:
        Metadata.insert_volume(tx, _vol("v", 5))
        Metadata.end_intent(tx, it)
    assert db.intents() == []
    rec = db.volume("v")
    assert rec is not None and rec.labels == {"a": "b"} and db.provisioned() == 5


def test_pool_record_round_trips_and_renames(tmp_path: Path) -> None:
    db = _db(tmp_path)
    assert db.pool().spec == {"name": "p"}
    db.rename_pool("q")
    db.set_overprovision_ratio(2.5)
    assert db.pool().name == "q" and db.pool().overprovision_ratio == 2.5


def test_every_operation_has_intent_first_and_commit_after() -> None:
    for op, steps in STEPS.items():
        if op == "import_pool":  # no intent: nothing but a probe mount to undo
            continue
        if op == "export_pool":  # its intent is the registry's exporting mark, written first
            assert steps[0] == "export_pool.marked" and len(set(steps)) == len(steps)
            continue
        assert steps[0].endswith(".intent"), op
        assert any(s.endswith(".commit") for s in steps), op
        assert len(set(steps)) == len(steps)
