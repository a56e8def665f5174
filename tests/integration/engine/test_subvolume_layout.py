"""The ``subvolume`` pool layout (issue 14) on a real btrfs pool: two loop-attached images.

What a user relies on: the bytes a volume held when it was snapshotted come back from a
clone of the snapshot (a restore), a snapshot of a volume with many extents is a subvolume
snapshot (its cost does not depend on them), nothing is left behind by a deletion, an
unrecorded subvolume is moved to the orphans and never deleted, a ``file`` pool on btrfs
still works as before, and a build that reads only format 1 refuses a subvolume pool;
volumes are written in place (NOCOW) unless the pool mirrors its data (last section).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import mmap
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import loop, nocow, subvolume
from statehold.engine.fiemap import raw_extents
from statehold.engine.groups import Member
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import (
    FsType,
    GiB,
    MiB,
    PoolSpec,
    RaidProfile,
    Source,
    SourceKind,
    VolumeMode,
)
from statehold.errors import FailedPrecondition, InvalidArgument, StateholdError
from tests.fixtures.engine import close_node, engine_home_at

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[3]
FORMAT_1_COMMIT = "2517676"
"""The last commit before pool layouts: its ``metadata.py`` is a format-1 reader."""


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


@pytest.fixture(scope="module")
def pool(node: Node, home: Path) -> Pool:
    return node.create_pool(PoolSpec(
        name="sv", images=(str(home / "disks" / "sv-0.img"), str(home / "disks" / "sv-1.img")),
        image_size=2 * GiB, layout="subvolume"))


def _write(path: Path, seed: str, size: int = 4 * MiB) -> str:
    data = hashlib.sha256(seed.encode()).digest() * (size // 32)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subvolume_show(path: Path) -> dict[str, str]:
    out = subprocess.run(["btrfs", "subvolume", "show", str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _release(pool: Pool, name: str, target: Path | None = None) -> None:
    if target is not None:
        pool.unmount(name, target)
    pool.detach(name)
    pool.delete_volume(name)


def test_volumes_and_snapshots_are_subvolumes_and_a_restore_returns_the_snapshot_bytes(
        pool: Pool, home: Path) -> None:
    assert pool.fs == "btrfs"
    assert pool.describe()["layout"] == "subvolume"
    pool.create_volume("data", 64 * MiB, fs=FsType.EXT4)
    entry = pool.volumes_dir / "data"
    assert pool.volume_path("data") == entry / "volume.img"
    assert subvolume.is_subvolume(entry)
    mnt = home / "mnt" / "data"
    pool.mount("data", mnt)
    before = _write(mnt / "file.bin", "before")

    snap = pool.create_snapshot("data", "data-s1")  # mounted: frozen around the ioctl
    assert snap.frozen
    snap_entry = pool.snapshots_dir / "data-s1"
    assert snap.path == snap_entry / "volume.img"
    assert subvolume.is_subvolume(snap_entry) and subvolume.readonly(snap_entry)
    shown = _subvolume_show(snap_entry)
    assert shown["Parent UUID"] == _subvolume_show(entry)["UUID"]
    assert "readonly" in shown["Flags"]

    after = _write(mnt / "file.bin", "after")
    # restore: a clone of the snapshot (larger than its source: grown at first mount)
    pool.create_volume("restored", 128 * MiB, fs=FsType.EXT4,
                       source=Source(SourceKind.SNAPSHOT, "data-s1"))
    assert subvolume.is_subvolume(pool.volumes_dir / "restored")
    assert not subvolume.readonly(pool.volumes_dir / "restored")
    rmnt = home / "mnt" / "restored"
    pool.mount("restored", rmnt)
    assert _digest(rmnt / "file.bin") == before
    assert os.statvfs(rmnt).f_blocks * os.statvfs(rmnt).f_frsize > 100 * MiB
    _write(rmnt / "other.bin", "restored writes")  # writable, and the snapshot is not touched

    # a clone of the mounted volume itself has its current bytes
    pool.create_volume("copy", 64 * MiB, fs=FsType.EXT4,
                       source=Source(SourceKind.VOLUME, "data"))
    cmnt = home / "mnt" / "copy"
    pool.mount("copy", cmnt)
    assert _digest(cmnt / "file.bin") == after
    assert _digest(mnt / "file.bin") == after

    _release(pool, "copy", cmnt)
    _release(pool, "restored", rmnt)
    pool.delete_snapshot("data-s1")
    _release(pool, "data", mnt)
    for name in ("data", "restored", "copy"):
        assert not os.path.lexists(pool.volumes_dir / name)
    assert not os.path.lexists(snap_entry)
    assert loop.under(pool.mountpoint) == {}
    assert pool.reconcile() == []


def _fragment(device: str, size: int, writes: int, seed: int) -> None:
    """``writes`` random 4 KiB direct writes through the loop device."""
    buf = mmap.mmap(-1, 4096)
    rng = random.Random(seed)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        for _ in range(writes):
            buf.seek(0)
            buf.write(rng.randbytes(4096))
            os.pwritev(fd, [buf], rng.randrange(size // 4096) * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_snapshot_of_a_fragmented_volume_is_a_subvolume_snapshot(pool: Pool) -> None:
    """Random writes with a snapshot kept make about two extents per write; the snapshot
    is then still one subvolume snapshot sharing the file's blocks (no per-extent copy)."""
    size = 256 * MiB
    pool.create_volume("frag", size, mode=VolumeMode.BLOCK, fs=None)
    device = pool.attach("frag")
    try:
        pool.create_snapshot("frag", "frag-kept")  # every later write copies on write
        _fragment(device, size, 12_000, seed=14)
        path = pool.volume_path("frag")
        extents = raw_extents(path, sync=True)
        assert len(extents) >= 10_000
        expected = _digest(path)

        snap = pool.create_snapshot("frag", "frag-s")
        entry = pool.snapshots_dir / "frag-s"
        assert os.stat(entry).st_ino == subvolume.FIRST_FREE_OBJECTID
        assert subvolume.readonly(entry)
        assert _subvolume_show(entry)["Parent UUID"] == \
            _subvolume_show(pool.volumes_dir / "frag")["UUID"]
        # the snapshot maps the very same physical blocks: shared, not copied
        assert [(e[0], e[1], e[2]) for e in raw_extents(snap.path, sync=False)] == \
            [(e[0], e[1], e[2]) for e in extents]
        assert _digest(snap.path) == expected
        _fragment(device, size, 500, seed=15)  # the volume moves on, the snapshot does not
        assert _digest(snap.path) == expected
    finally:
        pool.detach("frag")
    for name in ("frag-s", "frag-kept"):
        pool.delete_snapshot(name)
    pool.delete_volume("frag")


def test_group_snapshot_of_a_subvolume_pool(node: Node, pool: Pool, home: Path) -> None:
    digests = {}
    mnts = {}
    for name in ("ga", "gb"):
        pool.create_volume(name, 64 * MiB, fs=FsType.EXT4)
        mnts[name] = home / "mnt" / name
        pool.mount(name, mnts[name])
        digests[name] = _write(mnts[name] / "f.bin", name)
    try:
        group = node.snapshot_group("g1", [("sv", "ga", "ga-g1"), ("sv", "gb", "gb-g1")])
        assert group.members == (Member("sv", "ga", "ga-g1"), Member("sv", "gb", "gb-g1"))
        assert group.frozen == 2
        for name in ("ga", "gb"):
            _write(mnts[name] / "f.bin", "later")
            entry = pool.snapshots_dir / f"{name}-g1"
            assert subvolume.is_subvolume(entry) and subvolume.readonly(entry)
            pool.create_volume(f"{name}-r", 64 * MiB, fs=FsType.EXT4,
                               source=Source(SourceKind.SNAPSHOT, f"{name}-g1"))
            rmnt = home / "mnt" / f"{name}-r"
            pool.mount(f"{name}-r", rmnt)
            assert _digest(rmnt / "f.bin") == digests[name]
            _release(pool, f"{name}-r", rmnt)
        node.delete_snapshot_group("g1")
        assert not os.path.lexists(pool.snapshots_dir / "ga-g1")
    finally:
        for name in ("ga", "gb"):
            _release(pool, name, mnts[name])


def test_wait_cleaned_returns_once_the_cleaner_dropped_every_deleted_subvolume(
        pool: Pool) -> None:
    """Deleted without a commit, a subvolume waits for btrfs's cleaner, which sleeps until
    the next periodic commit: ``dropping`` counts it, and ``wait_cleaned`` wakes the
    cleaner and returns only once it is gone."""
    root = pool.mountpoint
    subvolume.wait_cleaned(root, 60)  # whatever earlier tests deleted
    for name in ("gone-a", "gone-b"):
        subvolume.create(root / name)
        subvolume.destroy(root / name, commit=False)
    assert subvolume.dropping(root) == 2
    subvolume.wait_cleaned(root, 60)
    assert subvolume.dropping(root) == 0
    assert subvolume.wait_cleaned(root, 60) == 0.0  # nothing left: no wait, no commit


@pytest.mark.parametrize("mounted", [False, True], ids=["block", "mounted"])
def test_a_snapshot_and_a_clone_wait_for_the_cleaner_before_they_are_taken(
        pool: Pool, home: Path, mounted: bool) -> None:
    """A deleted subvolume still being dropped makes the snapshot ioctl's commit carry the
    cleaner's work (a long freeze): the engine lets the cleaner finish first, so after the
    call no deleted subvolume is left, and the snapshot and clone hold the volume's bytes."""
    root = pool.mountpoint
    name = f"cw-{'m' if mounted else 'b'}"
    if mounted:
        pool.create_volume(name, 320 * MiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
        target = home / "mnt" / name
        pool.mount(name, target)
    else:
        pool.create_volume(name, 32 * MiB, mode=VolumeMode.BLOCK, fs=None)
    try:
        expected = _write(pool.volume_path(name), name, 8 * MiB) if not mounted else None
        if mounted:
            (target / "f").write_bytes(b"kept" * 1024)
        for step in ("snapshot", "clone"):
            stray = root / f"stray-{name}-{step}"
            subvolume.snapshot(pool.volume_path(name).parent, stray, readonly=True)
            subvolume.destroy(stray, commit=False)  # left to the cleaner, which sleeps
            assert subvolume.dropping(root) >= 1
            if step == "snapshot":
                pool.create_snapshot(name, f"{name}-s", freeze=mounted)
            else:
                pool.create_volume(f"{name}-c", pool.get_volume(name).size,
                                   mode=pool.get_volume(name).mode, fs=pool.get_volume(name).fs,
                                   source=Source(SourceKind.SNAPSHOT, f"{name}-s"))
            assert subvolume.dropping(root) == 0
        if expected is not None:
            assert _digest(pool.snapshot_path(f"{name}-s")) == expected
            assert _digest(pool.volume_path(f"{name}-c")) == expected
        pool.delete_volume(f"{name}-c")
        pool.delete_snapshot(f"{name}-s")
    finally:
        if mounted:
            pool.unmount(name, target)
            pool.detach(name)
        pool.delete_volume(name)


def test_recovery_moves_unrecorded_subvolumes_to_the_orphans_and_keeps_them(pool: Pool) -> None:
    stray_vol = pool.volumes_dir / "stray"
    subvolume.create(stray_vol)
    _write(stray_vol / "volume.img", "stray", MiB)
    stray_snap = pool.snapshots_dir / "stray-snap"
    subvolume.snapshot(stray_vol, stray_snap, readonly=True)
    pool.create_volume("kept", 16 * MiB, mode=VolumeMode.BLOCK, fs=None)
    pool.create_snapshot("kept", "kept-s")
    subvolume.set_readonly(pool.snapshots_dir / "kept-s", False)  # something changed it

    done = pool.reconcile()

    orphans = pool.meta_dir / "orphans"
    assert sorted(os.listdir(orphans)) == ["snapshots-stray-snap", "volumes-stray"]
    assert subvolume.is_subvolume(orphans / "volumes-stray")
    assert subvolume.readonly(orphans / "snapshots-stray-snap")
    assert _digest(orphans / "snapshots-stray-snap" / "volume.img") == \
        _digest(orphans / "volumes-stray" / "volume.img")
    assert sorted(os.listdir(pool.volumes_dir)) == ["kept"]
    assert sorted(os.listdir(pool.snapshots_dir)) == ["kept-s"]
    assert subvolume.readonly(pool.snapshots_dir / "kept-s")
    assert any("read-only again" in line for line in done)
    pool.delete_snapshot("kept-s")
    pool.delete_volume("kept")
    for orphan in ("snapshots-stray-snap", "volumes-stray"):
        subvolume.destroy(orphans / orphan)


def test_one_image_with_the_subvolume_layout_is_a_btrfs_pool(node: Node) -> None:
    """A node with one disk can have the layout: the engine formats that one disk btrfs
    (metadata in two copies on it, data in one, so volumes are written in place)."""
    p = node.create_pool(PoolSpec(name="one", image_size=GiB, layout="subvolume"))
    try:
        assert p.fs == "btrfs" and p.layout.name == "subvolume" and len(p.image_files) == 1
        data = [f for f in nocow.space_flags(p.mountpoint) if f & nocow.BLOCK_GROUP_DATA]
        assert data and not nocow.data_redundant(p.mountpoint)
        p.create_volume("v", 32 * MiB, mode=VolumeMode.BLOCK, fs=None)
        assert nocow.is_set(p.volume_path("v"))
        expected = _write(p.volume_path("v"), "one disk", 8 * MiB)
        snap = p.create_snapshot("v", "v-s")
        _write(p.volume_path("v"), "changed", 8 * MiB)
        assert subvolume.is_subvolume(snap.path.parent) and _digest(snap.path) == expected
        p.delete_snapshot("v-s")
        p.delete_volume("v")
    finally:
        node.destroy_pool("one")


def test_a_subvolume_layout_needs_btrfs(node: Node, home: Path) -> None:
    with pytest.raises(InvalidArgument, match="layout"):
        node.create_pool(PoolSpec(name="odd", image_size=GiB, layout="zfs"))
    xfs = node.create_pool(PoolSpec(name="xfs1", image_size=GiB))
    try:
        inside = xfs.mountpoint / "dir"
        inside.mkdir()
        with pytest.raises(InvalidArgument, match="btrfs"):
            node.create_pool(PoolSpec(name="dirxfs", directory=str(inside), layout="subvolume"))
        assert not (inside / ".statehold").exists()
    finally:
        node.destroy_pool("xfs1")
    assert "dirxfs" not in {p.name for p in node.pools()}


def test_a_file_pool_on_btrfs_works_as_before(node: Node, home: Path) -> None:
    p = node.create_pool(PoolSpec(
        name="fb", images=(str(home / "disks" / "fb-0.img"), str(home / "disks" / "fb-1.img")),
        image_size=GiB))
    try:
        assert p.fs == "btrfs" and p.layout.name == "file"
        p.create_volume("v", 32 * MiB, mode=VolumeMode.BLOCK, fs=None)
        assert p.volume_path("v") == p.volumes_dir / "v.img"
        expected = _write(p.volume_path("v"), "file layout", 8 * MiB)
        snap = p.create_snapshot("v", "v-s")
        assert snap.path == p.snapshots_dir / "v-s.img"
        assert snap.path.stat().st_mode & 0o777 == 0o444
        assert not subvolume.is_subvolume(p.volumes_dir) and not snap.path.is_dir()
        _write(p.volume_path("v"), "changed", 8 * MiB)
        p.create_volume("c", 32 * MiB, mode=VolumeMode.BLOCK, fs=None,
                        source=Source(SourceKind.SNAPSHOT, "v-s"))
        assert _digest(p.volume_path("c")) == expected
        assert _schema_version(p) == "1"
        p.delete_volume("c")
        p.delete_snapshot("v-s")
        p.delete_volume("v")
        assert os.listdir(p.volumes_dir) == [] and os.listdir(p.snapshots_dir) == []
    finally:
        node.destroy_pool("fb")


def _schema_version(pool: Pool) -> str:
    with contextlib.closing(sqlite3.connect(pool.meta_dir / "meta.db")) as db:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return str(row[0])


def _format_1_reader(tmp: Path) -> object:
    """``statehold/engine/metadata.py`` as it was before layouts, loaded from git."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{FORMAT_1_COMMIT}:src/statehold/engine/metadata.py"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    path = tmp / "metadata_format1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("metadata_format1", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_a_format_1_reader_refuses_a_subvolume_pool_and_reads_a_file_pool(
        pool: Pool, node: Node, tmp_path: Path) -> None:
    old = _format_1_reader(tmp_path)
    assert old.SCHEMA_VERSION == 1  # type: ignore[attr-defined]
    assert _schema_version(pool) == "2"
    with pytest.raises(FailedPrecondition, match="schema version 2"):
        old.Metadata(pool.meta_dir / "meta.db")  # type: ignore[attr-defined]

    made_now = node.create_pool(PoolSpec(name="plain", image_size=GiB))
    try:
        reader = old.Metadata(made_now.meta_dir / "meta.db")  # type: ignore[attr-defined]
        assert reader.pool().name == "plain"
        reader.close()
    finally:
        node.destroy_pool("plain")


# -- volumes written in place (NOCOW, engine/nocow.py) ------------------------------------------
# What a user relies on: a snapshot still holds the bytes it was taken with although the
# volume is overwritten in place (btrfs copies a shared block once, NOCOW or not); a clone
# keeps writing in place; a pool that mirrors its data keeps btrfs's copy-on-write and the
# checksums that let btrfs repair a bad copy. ``pool`` keeps one copy of data.

NOCOW_BLOCK = 4096
OFFSET = 8 * MiB


@pytest.fixture(scope="module")
def mirrored(node: Node, home: Path) -> Pool:
    return node.create_pool(PoolSpec(
        name="two", images=(str(home / "disks" / "two-0.img"), str(home / "disks" / "two-1.img")),
        image_size=2 * GiB, layout="subvolume", profile=RaidProfile.RAID1))


def _overwrite(path: Path, fill: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes([fill]) * NOCOW_BLOCK, OFFSET)
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
        return fh.read(NOCOW_BLOCK)


def test_a_single_copy_pool_writes_in_place_and_a_snapshot_keeps_its_bytes(pool: Pool) -> None:
    assert not nocow.data_redundant(pool.mountpoint)
    pool.create_volume("db", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    path = pool.volume_path("db")
    assert nocow.is_set(path) and nocow.is_set(path.parent)

    _overwrite(path, 1)
    first = _where(path)
    _overwrite(path, 2)
    assert _where(path) == first  # in place: no new extent per write

    snap = pool.create_snapshot("db", "db-s1")
    assert nocow.is_set(snap.path)
    _overwrite(path, 3)  # the block is shared with the snapshot: copied once
    moved = _where(path)
    assert moved != first
    assert _block(snap.path) == bytes([2]) * NOCOW_BLOCK
    assert _block(path) == bytes([3]) * NOCOW_BLOCK
    _overwrite(path, 4)  # no longer shared: in place again
    assert _where(path) == moved
    assert _block(snap.path) == bytes([2]) * NOCOW_BLOCK

    # a restore (a writable snapshot of the snapshot) writes in place as well
    pool.create_volume("db-restored", 64 * MiB, mode=VolumeMode.BLOCK, fs=None,
                     source=Source(SourceKind.SNAPSHOT, "db-s1"))
    restored = pool.volume_path("db-restored")
    assert nocow.is_set(restored)
    assert _block(restored) == bytes([2]) * NOCOW_BLOCK

    pool.delete_volume("db-restored")
    pool.delete_snapshot("db-s1")
    pool.delete_volume("db")
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


def test_the_flag_is_only_set_on_an_empty_directory(pool: Pool) -> None:
    directory = pool.mountpoint / "scratch"
    directory.mkdir()
    try:
        (directory / "data").write_bytes(b"x")
        with pytest.raises(StateholdError, match="not empty"):
            nocow.set_flag(directory)
        assert not nocow.is_set(directory)
    finally:
        (directory / "data").unlink()
        directory.rmdir()
