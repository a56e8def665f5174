"""What is particular to SMB (smbd + two smbnetfs mounts standing for two nodes): the
traits found when a root is opened, the lock that must not rely on flock, a lock left by
a dead process, and Local PV discovery passing an SMB mount by. The behaviour every shared
filesystem shares is test_contract.py."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from statehold.errors import Unavailable
from statehold.shared import metadata as md
from statehold.shared.discovery import scan
from statehold.shared.root import SharedRoot
from statehold.shared.traits import RootTraits

pytestmark = pytest.mark.root
MiB = 1024 * 1024


@pytest.fixture
def smb(scratch: Path, smb_nodes: tuple[Path, Path]) -> tuple[Path, Path]:
    node_a, node_b = smb_nodes
    (node_a / scratch.name).mkdir()
    return node_a / scratch.name, node_b / scratch.name


def test_an_smb_root_is_recognised_and_probed(smb: tuple[Path, Path]) -> None:
    root = SharedRoot(smb[0])
    assert root.traits == RootTraits(fstype="fuse.smbnetfs", shared_locks=False, atomic_replace=False,
                                     reports_size=False, case_sensitive=False, symlinks=False)
    assert list((root.meta / "tmp").iterdir()) == []  # the probes leave nothing


def test_flock_on_smbnetfs_does_not_reach_the_other_node(smb: tuple[Path, Path]) -> None:
    """Why the lock directory exists: both mounts get the same exclusive flock."""
    (smb[0] / "f").write_bytes(b"")
    fa = os.open(smb[0] / "f", os.O_RDWR)
    fb = os.open(smb[1] / "f", os.O_RDWR)
    try:
        fcntl.flock(fa, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fb, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no BlockingIOError: not shared
    finally:
        os.close(fa)
        os.close(fb)


def test_the_lock_directory_excludes_the_other_node(smb: tuple[Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = SharedRoot(smb[0]), SharedRoot(smb[1])
    monkeypatch.setattr(md, "LOCK_WAIT_SECONDS", 0.0)
    with a.lock():
        holder = md._holder(a.meta / md.LOCK_DIR)
        assert holder is not None and holder["pid"] == os.getpid()
        with pytest.raises(Unavailable, match=f"held by host .* pid {os.getpid()}"):
            b.create_volume("pvc-1", MiB)
    assert not (a.meta / md.LOCK_DIR).exists()
    assert b.create_volume("pvc-1", MiB).size == MiB


HOLD = """
import sys
from pathlib import Path
from statehold.shared.root import SharedRoot
with SharedRoot(Path(sys.argv[1])).lock():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_lock_left_by_a_killed_process_is_broken(smb: tuple[Path, Path]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(smb[0])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    b = SharedRoot(smb[1])
    assert (b.meta / md.LOCK_DIR).exists()  # the dead holder's, on the share
    assert b.create_volume("pvc-after", MiB).size == MiB  # same boot, pid gone: broken
    assert not (b.meta / md.LOCK_DIR).exists()
    assert not list(b.meta.glob(f"{md.LOCK_DIR}.stale-*"))


def test_discovery_passes_an_smb_mount_by(scratch: Path, smb_nodes: tuple[Path, Path],
                                          make_loopfs: Callable[..., object], mounts: list[Path]) -> None:
    disks = scratch / "disks"
    disks.mkdir()
    disk = make_loopfs("ext4", 64)
    for name, source in (("share", smb_nodes[0]), ("ssd1", disk.mountpoint)):  # type: ignore[attr-defined]
        (disks / name).mkdir()
        subprocess.run(["mount", "--bind", str(source), str(disks / name)], check=True, capture_output=True)
        mounts.append(disks / name)
    assert [d.name for d in scan(disks)] == ["ssd1"]
