"""Snapshots and clones: FICLONE reflinks, read-only, independent of their source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.engine import freeze, snapshotting
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GrowResult, MiB, Source, SourceKind, VolumeMode
from statehold.errors import AlreadyExists, InvalidArgument, NotFound, OutOfRange, Temporary

pytestmark = pytest.mark.root


def _filled(pool: Pool, scratch: Path, name: str = "src", fs: FsType = FsType.EXT4) -> Path:
    pool.create_volume(name, 64 * MiB, fs=fs)
    mnt = scratch / name
    pool.mount(name, mnt)
    (mnt / "f").write_bytes(b"before" * 4096)
    return mnt


def test_snapshot_is_read_only_and_idempotent(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    snap = pool.create_snapshot("src", "s1")
    assert snap.id == "test/s1" and snap.source_volume == "src" and snap.frozen
    assert snap.path.stat().st_mode & 0o777 == 0o444
    assert snap.path.stat().st_size == 64 * MiB
    assert pool.create_snapshot("src", "s1") == snap
    assert pool.get_snapshot("s1") == snap
    assert [s.name for s in pool.list_snapshots("src")] == ["s1"]
    assert pool.list_snapshots("other") == []


def test_snapshot_name_of_another_volume_is_already_exists(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    pool.create_volume("other", 64 * MiB, mode=VolumeMode.BLOCK)
    pool.create_snapshot("src", "s1")
    with pytest.raises(AlreadyExists):
        pool.create_snapshot("other", "s1")


def test_snapshot_bad_input(pool: Pool) -> None:
    with pytest.raises(NotFound):
        pool.create_snapshot("ghost", "s1")
    pool.create_volume("v", 64 * MiB, mode=VolumeMode.BLOCK)
    with pytest.raises(InvalidArgument):
        pool.create_snapshot("v", "Bad_Name")
    with pytest.raises(NotFound):
        pool.get_snapshot("nope")
    with pytest.raises(NotFound):
        pool.delete_snapshot("nope")
    assert pool.list_snapshots() == []
    assert list(pool.snapshots_dir.iterdir()) == []


def test_snapshot_survives_source_deletion(pool: Pool, scratch: Path) -> None:
    mnt = _filled(pool, scratch)
    pool.create_snapshot("src", "keep")
    pool.unmount("src", mnt)
    pool.detach("src")
    pool.delete_volume("src")
    snap = pool.get_snapshot("keep")
    assert snap.source_volume == "src"
    pool.create_volume("back", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, "keep"))
    back = scratch / "back"
    pool.mount("back", back)
    assert (back / "f").read_bytes() == b"before" * 4096


def test_clone_holds_old_data_while_source_changes(pool: Pool, scratch: Path) -> None:
    mnt = _filled(pool, scratch, fs=FsType.XFS)
    pool.create_snapshot("src", "s")
    (mnt / "f").write_bytes(b"after" * 4096)
    clone = pool.create_volume("c", 300 * MiB, source=Source(SourceKind.SNAPSHOT, "s"))
    assert clone.source == Source(SourceKind.SNAPSHOT, "s") and clone.formatted
    cm = scratch / "c"
    pool.mount("c", cm)  # XFS clone shares its source's UUID: mounted side by side
    assert (cm / "f").read_bytes() == b"before" * 4096
    (cm / "f").write_bytes(b"clone")
    assert (mnt / "f").read_bytes() == b"after" * 4096


def test_clone_of_a_mounted_volume_is_consistent(pool: Pool, scratch: Path) -> None:
    mnt = _filled(pool, scratch)
    pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.VOLUME, "src"))
    (mnt / "f").write_bytes(b"later")
    cm = scratch / "c"
    pool.mount("c", cm)
    assert (cm / "f").read_bytes() == b"before" * 4096


def test_clone_rules(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    pool.create_snapshot("src", "s")
    snap = Source(SourceKind.SNAPSHOT, "s")
    with pytest.raises(OutOfRange):
        pool.create_volume("small", 32 * MiB, fs=FsType.EXT4, source=snap)
    with pytest.raises(NotFound):
        pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, "x"))
    with pytest.raises(NotFound):
        pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.VOLUME, "x"))
    with pytest.raises(InvalidArgument):
        pool.create_volume("c", 300 * MiB, fs=FsType.XFS, source=snap)
    with pytest.raises(InvalidArgument):
        pool.create_volume("c", 64 * MiB, mode=VolumeMode.BLOCK, source=snap)
    assert [v.name for v in pool.list_volumes()] == ["src"]


def test_larger_clone_grows_its_filesystem_on_mount(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    pool.create_snapshot("src", "s")
    big = pool.create_volume("big", 128 * MiB, fs=FsType.EXT4,
                             source=Source(SourceKind.SNAPSHOT, "s"))
    assert big.size == 128 * MiB
    cm = scratch / "big"
    pool.mount("big", cm)
    st = os.statvfs(cm)
    assert st.f_blocks * st.f_frsize > 100 * MiB
    assert (cm / "f").read_bytes() == b"before" * 4096
    assert pool.expand("big", 128 * MiB).grow is GrowResult.ONLINE


def test_snapshot_of_attached_block_volume_holds_written_blocks(pool: Pool) -> None:
    pool.create_volume("blk", 64 * MiB, mode=VolumeMode.BLOCK)
    dev = pool.attach("blk")
    payload = b"\xab" * 65536
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, MiB)
    finally:
        os.close(fd)  # no fsync: the snapshot flushes the device's buffers itself
    snap = pool.create_snapshot("blk", "bs")
    assert not snap.frozen
    with open(snap.path, "rb") as fh:
        fh.seek(MiB)
        assert fh.read(len(payload)) == payload


def test_delete_snapshot_keeps_clones_and_source(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    pool.create_snapshot("src", "s")
    pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, "s"))
    pool.delete_snapshot("s")
    assert pool.list_snapshots() == []
    assert not (pool.snapshots_dir / "s.img").exists()
    cm = scratch / "c"
    pool.mount("c", cm)
    assert (cm / "f").read_bytes() == b"before" * 4096


def test_snapshot_of_read_only_mounted_volume_needs_no_freeze(pool: Pool, scratch: Path) -> None:
    mnt = _filled(pool, scratch)
    pool.unmount("src", mnt)
    pool.mount("src", mnt, readonly=True)
    snap = pool.create_snapshot("src", "ro")
    assert not snap.frozen
    pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, "ro"))
    pool.mount("c", scratch / "c")
    assert (scratch / "c" / "f").read_bytes() == b"before" * 4096


def test_retried_clone_is_idempotent_after_its_snapshot_is_deleted(pool: Pool, scratch: Path) -> None:
    _filled(pool, scratch)
    pool.create_snapshot("src", "s")
    src = Source(SourceKind.SNAPSHOT, "s")
    first = pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=src)
    pool.delete_snapshot("s")
    assert pool.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=src) == first


def test_a_snapshot_whose_freeze_outlasts_its_timeout_keeps_nothing_and_thaws(
        pool: Pool, scratch: Path) -> None:
    """Issue 14, part 2: a single-volume snapshot's freeze is held by the freeze keeper,
    whose watchdog thaws on timeout; the snapshot then fails Temporary and nothing stays
    (no row, no file, no intent), and the filesystem takes writes again."""
    mnt = _filled(pool, scratch)
    with pytest.raises(Temporary):
        snapshotting.create(pool, "src", "s1", freeze=True, freeze_timeout=1e-6)
    assert pool.list_snapshots() == []
    assert list(pool.snapshots_dir.iterdir()) == []
    assert pool.db.intents() == []
    assert not freeze.is_frozen(str(mnt))
    (mnt / "f").write_bytes(b"after" * 4096)  # would block on a frozen filesystem
    snap = pool.create_snapshot("src", "s1")  # the retry succeeds
    assert snap.frozen
