"""XFS: project quotas when the kernel has them (prjquota mount), reflink snapshots always.

The project-quota test needs a kernel built with CONFIG_XFS_QUOTA. It is skipped in one
known, explicit case only: the kernel itself says, for this very mount, "quota support not
available in this kernel" (it does here: see docs/shared.md); the skip reason names the
kernel release, so the report shows it, and the btrfs qgroup tests carry the enforced-size
proof instead. Any other failure to mount with ``prjquota`` fails the test.
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
NO_XFS_QUOTA = "quota support not available in this kernel"
"""What XFS logs when a quota mount option meets a kernel built without CONFIG_XFS_QUOTA."""


def _kernel_log() -> list[str]:
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=True, timeout=30).stdout
    return out.splitlines()


def _since(before: list[str], after: list[str]) -> list[str]:
    """The kernel log lines logged after ``before`` was read (the ring buffer may have
    dropped its oldest lines in between: then every line is new)."""
    if not before:
        return after
    last = before[-1]
    for i in range(len(after) - 1, -1, -1):
        if after[i] == last:
            return after[i + 1:]
    return after


def test_project_quota_enforces_and_expands_online(make_loopfs: Callable[..., object]) -> None:
    before = _kernel_log()
    try:
        fs = make_loopfs("xfs", 300, mount_options="prjquota")
    except subprocess.CalledProcessError as exc:
        said = _since(before, _kernel_log())
        if any(NO_XFS_QUOTA in line for line in said):
            pytest.skip(f"kernel {os.uname().release} has no XFS quota support (CONFIG_XFS_QUOTA off: "
                        f"XFS says {NO_XFS_QUOTA!r}); btrfs qgroups carry the hard-limit tests here")
        pytest.fail(f"mount -o prjquota failed: {exc.stderr.strip()}; kernel log: {said[-5:]}",
                    pytrace=False)
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
