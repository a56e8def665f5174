"""Volumes of a ``subvolume`` pool are written in place (NOCOW) when the pool keeps one copy
of data, and keep btrfs's copy-on-write and checksums when it keeps two (engine/nocow.py).

What a user relies on: a snapshot still holds the bytes it was taken with although the
volume is overwritten in place (btrfs copies a shared block once, NOCOW or not); a clone
and a replica's files keep writing in place; a mirrored pool keeps the checksums that let
btrfs repair a bad copy. Real btrfs pools on loop-attached images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import nocow
from statehold.engine.fiemap import raw_extents
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import GiB, MiB, PoolSpec, RaidProfile, Source, SourceKind, VolumeMode
from statehold.errors import StateholdError
from tests.fixtures.engine import close_node, engine_home_at

pytestmark = pytest.mark.root

BLOCK = 4096
OFFSET = 8 * MiB


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    with engine_home_at() as path:
        yield path


@pytest.fixture(scope="module")
def node(home: Path) -> Iterator[Node]:
    n = Node(home)
    try:
        yield n
    finally:
        close_node(n)


def _pool(node: Node, home: Path, name: str, profile: RaidProfile) -> Pool:
    return node.create_pool(PoolSpec(
        name=name, images=(str(home / "disks" / f"{name}-0.img"),
                           str(home / "disks" / f"{name}-1.img")),
        image_size=2 * GiB, layout="subvolume", profile=profile))


@pytest.fixture(scope="module")
def single(node: Node, home: Path) -> Pool:
    return _pool(node, home, "one", RaidProfile.SINGLE)


@pytest.fixture(scope="module")
def mirrored(node: Node, home: Path) -> Pool:
    return _pool(node, home, "two", RaidProfile.RAID1)


def _overwrite(path: Path, fill: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes([fill]) * BLOCK, OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)


def _where(path: Path) -> int:
    """The filesystem address of the block at OFFSET (btrfs's logical address)."""
    for logical, physical, length, _r1, _r2, _flags in raw_extents(path):
        if logical <= OFFSET < logical + length:
            return physical + OFFSET - logical
    raise AssertionError(f"{path} has no extent at {OFFSET}")


def _block(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(OFFSET)
        return fh.read(BLOCK)


def test_a_single_copy_pool_writes_in_place_and_a_snapshot_keeps_its_bytes(single: Pool) -> None:
    assert not nocow.data_redundant(single.mountpoint)
    single.create_volume("db", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    path = single.volume_path("db")
    assert nocow.is_set(path) and nocow.is_set(path.parent)

    _overwrite(path, 1)
    first = _where(path)
    _overwrite(path, 2)
    assert _where(path) == first  # in place: no new extent per write

    snap = single.create_snapshot("db", "db-s1")
    assert nocow.is_set(snap.path)
    _overwrite(path, 3)  # the block is shared with the snapshot: copied once
    moved = _where(path)
    assert moved != first
    assert _block(snap.path) == bytes([2]) * BLOCK
    assert _block(path) == bytes([3]) * BLOCK
    _overwrite(path, 4)  # no longer shared: in place again
    assert _where(path) == moved
    assert _block(snap.path) == bytes([2]) * BLOCK

    # a restore (a writable snapshot of the snapshot) writes in place as well
    single.create_volume("db-restored", 64 * MiB, mode=VolumeMode.BLOCK, fs=None,
                         source=Source(SourceKind.SNAPSHOT, "db-s1"))
    restored = single.volume_path("db-restored")
    assert nocow.is_set(restored)
    assert _block(restored) == bytes([2]) * BLOCK

    single.delete_volume("db-restored")
    single.delete_snapshot("db-s1")
    single.delete_volume("db")
    assert not os.path.lexists(path.parent)


def test_a_mirrored_pool_keeps_copy_on_write(mirrored: Pool) -> None:
    assert nocow.data_redundant(mirrored.mountpoint)
    mirrored.create_volume("db", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    path = mirrored.volume_path("db")
    assert not nocow.is_set(path) and not nocow.is_set(path.parent)
    _overwrite(path, 1)
    first = _where(path)
    _overwrite(path, 2)
    assert _where(path) != first  # copy-on-write: checksummed, and a new place each time
    mirrored.delete_volume("db")


def test_the_flag_is_only_set_on_an_empty_directory(single: Pool) -> None:
    directory = single.mountpoint / "scratch"
    directory.mkdir()
    try:
        (directory / "data").write_bytes(b"x")
        with pytest.raises(StateholdError, match="not empty"):
            nocow.set_flag(directory)
        assert not nocow.is_set(directory)
    finally:
        (directory / "data").unlink()
        directory.rmdir()
