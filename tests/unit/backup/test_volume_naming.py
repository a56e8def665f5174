"""The volume backup service's conventions, as pure functions: snapshot names (stable for a
key, recognisable, earlier releases' names too) and the two forms of a manifest's
``snapshot`` field."""

from __future__ import annotations

from array import array

import pytest

from statehold.backup.manifest import Manifest
from statehold.backup.volumes import is_backup_snapshot, snapshot_in_pool, snapshot_name
from statehold.engine.names import validate_name


def test_a_key_names_the_same_snapshot_every_time_and_no_key_a_fresh_one() -> None:
    assert snapshot_name("db", "uid-1") == snapshot_name("db", "uid-1")
    assert snapshot_name("db", "uid-1") != snapshot_name("db", "uid-2")
    assert snapshot_name("db", "uid-1") != snapshot_name("db2", "uid-1")
    assert snapshot_name("db") != snapshot_name("db")


@pytest.mark.parametrize("volume", ["db", "pvc-" + "0123abcd-" * 4 + "ff", "a" * 63, "x-" * 31 + "y"])
@pytest.mark.parametrize("key", [None, "5f0c1e2a-8b9d-4c3e-a1f2-0b1c2d3e4f50"])
def test_every_service_snapshot_name_is_a_valid_name_it_recognises(volume: str, key: str | None) -> None:
    name = snapshot_name(volume, key)
    assert validate_name(name) == name
    assert is_backup_snapshot(name)


@pytest.mark.parametrize("name", [
    "db-bk-20260105t100000-1a2b",           # the CLI's, before one scheme
    "vb-5f0c1e2a8b9d4c3ea1f20b1c",          # the operator's, before one scheme
    "pg-data-bk-0123456789abcdef0123",
])
def test_earlier_and_current_backup_snapshot_names_are_recognised(name: str) -> None:
    assert is_backup_snapshot(name)


@pytest.mark.parametrize("name", [
    "db-before-upgrade", "db-bk-monday", "db-bk-", "bk-0123456789abcdef0123", "vb-monday",
    "db-bk-0123456789abcdef012", "db-bk-20260105t100000", "db-bk-0123456789ABCDEF0123",
])
def test_user_snapshot_names_are_not_backup_snapshots(name: str) -> None:
    assert not is_backup_snapshot(name)


def manifest(volume: str, snapshot: str | None) -> Manifest:
    return Manifest(backup_id="b", volume=volume, size=0, chunk_size=1 << 20, created=0.0,
                    offsets=array("Q"), ids=b"", snapshot=snapshot)


@pytest.mark.parametrize(("volume", "snapshot", "pool", "expected"), [
    ("fast/db", "fast/db-bk-x", "fast", "db-bk-x"),        # pool/name, this release
    ("fast/db", "vb-5f0c", "fast", "vb-5f0c"),              # bare: the volume's pool
    ("fast/db", "slow/db-bk-x", "fast", None),              # another pool's
    ("slow/db", "vb-5f0c", "fast", None),
    ("fast/db", None, "fast", None),
    ("fast/db", "", "fast", None),
])
def test_the_manifests_snapshot_is_read_in_both_forms(volume: str, snapshot: str | None, pool: str,
                                                      expected: str | None) -> None:
    assert snapshot_in_pool(manifest(volume, snapshot), pool) == expected
