"""XFS: project quotas when the kernel has them (prjquota mount), reflink snapshots always.

The project-quota test needs a kernel built with CONFIG_XFS_QUOTA; where ``mount -o
prjquota`` is refused the test is skipped with the kernel's reason (it is here: see
docs/shared.md), and the btrfs qgroup tests carry the enforced-size proof instead.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from statehold.errors import FailedPrecondition
from statehold.shared.root import SharedRoot
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import CopyMethod, QuotaKind
from statehold.shared.xfs_project import XfsProject

pytestmark = pytest.mark.root
MiB = 1024 * 1024


def test_project_quota_enforces_and_expands_online(make_loopfs: Callable[..., object]) -> None:
    try:
        fs = make_loopfs("xfs", 300, mount_options="prjquota")
    except subprocess.CalledProcessError as exc:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
        reason = next((line for line in reversed(dmesg) if "quota" in line.lower()), exc.stderr)
        pytest.skip(f"mount -o prjquota refused by this kernel: {reason.strip()}")
    root = SharedRoot(fs.mountpoint)  # type: ignore[attr-defined]
    assert isinstance(root.enforcer, XfsProject)
    vol = root.create_volume("pvc-q", 8 * MiB, enforce=True)
    assert vol.quota == QuotaKind.XFS_PROJECT and vol.project_id is not None
    fd = os.open(vol.path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as err:
            for _ in range(64):
                os.write(fd, os.urandom(MiB))
                os.fsync(fd)
        assert err.value.errno in (errno.EDQUOT, errno.ENOSPC)
        root.expand_volume("pvc-q", 32 * MiB)
        os.write(fd, os.urandom(MiB))
        os.fsync(fd)
    finally:
        os.close(fd)
    assert root.usage("pvc-q").used >= 8 * MiB


def test_xfs_without_prjquota_refuses_enforcement_but_reflinks(make_loopfs: Callable[..., object]) -> None:
    fs = make_loopfs("xfs", 300, mkfs_args=("-m", "reflink=1"))
    mp: Path = fs.mountpoint  # type: ignore[attr-defined]
    root = SharedRoot(mp)
    with pytest.raises(FailedPrecondition, match="quota"):
        root.create_volume("pvc-a", MiB, enforce=True)
    assert {p.name for p in mp.iterdir()} == {".statehold"}
    vol = root.create_volume("pvc-a", 64 * MiB)
    (vol.path / "big").write_bytes(os.urandom(16 * MiB))
    before = os.statvfs(mp)
    snap = SnapshotStore(root).create("pvc-a", "s")
    after = os.statvfs(mp)
    assert snap.copy_method == CopyMethod.REFLINK
    # A reflink copy shares extents: far less than the 16 MiB a byte copy would take.
    assert (before.f_bfree - after.f_bfree) * before.f_frsize < 4 * MiB
    assert (snap.path / "big").read_bytes() == (vol.path / "big").read_bytes()


def test_project_assignment_works_even_where_limits_cannot(make_loopfs: Callable[..., object]) -> None:
    """``project -s`` is an inode attribute (works without quota support); ``limit`` needs
    the kernel's quota code. Checks our xfs_quota command lines against the real tool."""
    fs = make_loopfs("xfs", 300)
    mp: Path = fs.mountpoint  # type: ignore[attr-defined]
    vol = mp / "v"
    vol.mkdir()
    (vol / "old").write_text("before assignment")
    enforcer = XfsProject(mp)
    enforcer.assign(vol, 100_007)
    (vol / "new").write_text("inherits the project")
    listing = subprocess.run(["lsattr", "-p", "-d", str(vol)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[0] == "100007" and "P" in listing[1]  # project id + inherit flag
    for name in ("old", "new"):
        out = subprocess.run(["lsattr", "-p", str(vol / name)], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[0] == "100007"
    with pytest.raises(FailedPrecondition, match="xfs_quota"):  # mounted without prjquota
        enforcer.apply(vol, 8 * MiB, 100_007)
