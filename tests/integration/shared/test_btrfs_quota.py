"""Enforced sizes on a real btrfs with quota groups (loop device): EDQUOT past the limit,
online expansion, subvolume snapshots that are truly read-only."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from statehold.errors import FailedPrecondition
from statehold.shared.btrfs_qgroup import BtrfsQgroup
from statehold.shared.root import SharedRoot
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import CopyMethod, DeletionPolicy, QuotaKind, Source, SourceKind

pytestmark = pytest.mark.root
MiB = 1024 * 1024


def fill(path: Path, limit_mib: int) -> int:
    """Write 1 MiB chunks (fsync each) until refused; the MiB written, or -errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    written = 0
    try:
        for _ in range(limit_mib):
            os.write(fd, os.urandom(MiB))
            os.fsync(fd)
            written += 1
    except OSError as exc:
        return -exc.errno
    finally:
        os.close(fd)
    return written


@pytest.fixture
def btrfs_root(make_loopfs: Callable[..., object]) -> SharedRoot:
    fs = make_loopfs("btrfs", 400)
    mp: Path = fs.mountpoint  # type: ignore[attr-defined]
    subprocess.run(["btrfs", "quota", "enable", str(mp)], check=True, capture_output=True)
    (mp / "share").mkdir()
    return SharedRoot(mp / "share")


def test_writes_past_the_limit_fail_with_edquot(btrfs_root: SharedRoot) -> None:
    assert isinstance(btrfs_root.enforcer, BtrfsQgroup)
    vol = btrfs_root.create_volume("pvc-q", 8 * MiB, enforce=True)
    assert vol.quota == QuotaKind.BTRFS_QGROUP
    assert fill(vol.path / "f", 64) == -errno.EDQUOT
    used = btrfs_root.usage("pvc-q").used
    assert 6 * MiB <= used <= 8 * MiB


def test_expansion_raises_the_limit_online(btrfs_root: SharedRoot) -> None:
    vol = btrfs_root.create_volume("pvc-q", 8 * MiB, enforce=True)
    fd = os.open(vol.path / "held-open", os.O_WRONLY | os.O_CREAT, 0o644)  # a writer stays
    try:
        assert fill(vol.path / "f", 64) == -errno.EDQUOT
        btrfs_root.expand_volume("pvc-q", 32 * MiB)
        os.write(fd, os.urandom(MiB))
        os.fsync(fd)
        assert fill(vol.path / "g", 16) == 16
    finally:
        os.close(fd)
    assert btrfs_root.get_volume("pvc-q").size == 32 * MiB


def test_snapshot_is_a_readonly_subvolume_and_clone_is_writable(btrfs_root: SharedRoot) -> None:
    vol = btrfs_root.create_volume("pvc-q", 16 * MiB, enforce=True)
    (vol.path / "f").write_bytes(b"before")
    snap = SnapshotStore(btrfs_root).create("pvc-q", "s1")
    assert snap.copy_method == CopyMethod.SUBVOLUME
    with pytest.raises(OSError) as err:
        (snap.path / "f").write_bytes(b"changed")
    assert err.value.errno == errno.EROFS
    (vol.path / "f").write_bytes(b"after")
    clone = btrfs_root.create_volume("pvc-c", 16 * MiB, enforce=True,
                                     source=Source(SourceKind.SNAPSHOT, "s1"))
    assert clone.copy_method == CopyMethod.SUBVOLUME
    assert (clone.path / "f").read_bytes() == b"before"
    (clone.path / "f").write_bytes(b"mine")
    assert fill(clone.path / "big", 64) == -errno.EDQUOT  # the clone has its own limit
    SnapshotStore(btrfs_root).delete("s1")
    assert not snap.path.exists()


def test_delete_and_archive_of_subvolumes(btrfs_root: SharedRoot) -> None:
    a = btrfs_root.create_volume("pvc-a", 8 * MiB)
    b = btrfs_root.create_volume("pvc-b", 8 * MiB, policy=DeletionPolicy.ARCHIVE)
    (b.path / "f").write_bytes(b"keep")
    btrfs_root.delete_volume("pvc-a")
    assert not a.path.exists()
    dest = btrfs_root.delete_volume("pvc-b")
    assert dest is not None and (dest / "f").read_bytes() == b"keep"


def test_btrfs_without_quotas_refuses_enforcement_and_reflinks(make_loopfs: Callable[..., object]) -> None:
    fs = make_loopfs("btrfs", 300)
    root = SharedRoot(fs.mountpoint)  # type: ignore[attr-defined]
    assert root.enforcer.kind == QuotaKind.ACCOUNTING
    with pytest.raises(FailedPrecondition):
        root.create_volume("pvc-a", MiB, enforce=True)
    assert {p.name for p in root.path.iterdir()} == {".statehold"}
    vol = root.create_volume("pvc-a", MiB)
    (vol.path / "f").write_bytes(b"x" * 65536)
    assert SnapshotStore(root).create("pvc-a", "s").copy_method == CopyMethod.REFLINK


def test_restore_into_a_quota_root_is_a_limited_subvolume(btrfs_root: SharedRoot, scratch: Path) -> None:
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.shared.backups import backup_volume, restore_volume

    repo = Repository.init(DirectoryStore(scratch / "repo", create=True), "pw", chunk_size=1 * MiB)
    vol = btrfs_root.create_volume("pvc-q", 8 * MiB, enforce=True)
    (vol.path / "f").write_bytes(b"backed up")
    m = backup_volume(repo, btrfs_root, "pvc-q", volume_key="v")
    restored = restore_volume(repo, m.backup_id, btrfs_root, "pvc-r", enforce=True)
    assert (restored.path / "f").read_bytes() == b"backed up"
    assert os.lstat(restored.path).st_ino == 256  # a subvolume, so its qgroup limit applies
    assert fill(restored.path / "big", 64) == -errno.EDQUOT
