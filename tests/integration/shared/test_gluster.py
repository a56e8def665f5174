"""GlusterFS as a native share: ref-counted mounts, a dead client remounted, bad shares.

What every shared filesystem must do (two nodes, concurrent writers, accounting, deletion
policies, snapshots, backups) is the contract suite, test_contract.py, which runs over
GlusterFS among the others."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from statehold.engine.mounts import mount_at
from statehold.engine.mounts import mounts as read_mounts
from statehold.errors import InvalidArgument, Unavailable
from statehold.shared.share import ShareMounter, ShareSpec
from tests.fixtures.gluster import GlusterServer

pytestmark = pytest.mark.root
MiB = 1024 * 1024


@pytest.fixture
def spec(gluster_server: GlusterServer) -> ShareSpec:
    return ShareSpec.parse(gluster_server.source, "glusterfs", gluster_server.mount_options("t"))


def test_native_mount_is_counted_and_removed_with_the_last_user(
        scratch: Path, spec: ShareSpec, mounts: list[Path]) -> None:
    mounter = ShareMounter(scratch / "node-c")
    target = mounter.target(spec)
    mounts.append(target)
    assert mounter.acquire(spec, "vol-1") == target
    assert mounter.acquire(spec, "vol-2") == target
    assert mounter.acquire(spec, "vol-2") == target
    assert len([e for e in read_mounts() if e.target == str(target)]) == 1
    assert mounter.release(spec, "vol-1") is False
    assert mount_at(target) is not None
    assert mounter.release(spec, "vol-2") is True
    assert mount_at(target) is None and not target.exists()


def test_unreachable_share_is_unavailable_and_leaves_nothing(scratch: Path) -> None:
    with socket.socket() as sock:  # a port on 127.0.0.9 where nothing listens
        sock.bind(("127.0.0.9", 0))
        port = sock.getsockname()[1]
    spec = ShareSpec.parse("127.0.0.9:/nothing", "glusterfs", f"volfile-server-port={port}")
    mounter = ShareMounter(scratch / "node-d")
    with pytest.raises(Unavailable, match="unreachable"):
        mounter.acquire(spec, "vol-1")
    assert not mounter.target(spec).exists()
    assert mounter.users(spec) == set()
    assert mount_at(mounter.target(spec)) is None


def test_wrong_mount_options_are_invalid_and_leave_nothing(
        scratch: Path, gluster_server: GlusterServer, mounts: list[Path]) -> None:
    spec = ShareSpec.parse(gluster_server.source, "glusterfs",
                           (*gluster_server.mount_options("bad"), "no-such-option=1"))
    mounter = ShareMounter(scratch / "node-e")
    mounts.append(mounter.target(spec))
    with pytest.raises(InvalidArgument, match="mountOptions"):
        mounter.acquire(spec, "vol-1")
    assert not mounter.target(spec).exists()
    assert mounter.users(spec) == set()


def test_missing_gluster_volume_is_invalid(scratch: Path, gluster_server: GlusterServer,
                                           mounts: list[Path]) -> None:
    spec = ShareSpec.parse(f"127.0.0.2:/no-such-volume-{scratch.name[-6:]}", "glusterfs",
                           gluster_server.mount_options("missing"))
    mounter = ShareMounter(scratch / "node-f")
    mounts.append(mounter.target(spec))
    with pytest.raises(InvalidArgument):
        mounter.acquire(spec, "vol-1")
    assert not mounter.target(spec).exists()


def _client_pid(target: Path) -> int:
    """The glusterfs FUSE client serving exactly ``target`` (started by this test)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"glusterfs") and str(target).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no glusterfs client for {target}")


def _running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_dead_client_mount_is_remounted(scratch: Path, spec: ShareSpec, mounts: list[Path]) -> None:
    mounter = ShareMounter(scratch / "node-g")
    target = mounter.target(spec)
    mounts.append(target)
    mounter.acquire(spec, "vol-1")
    (target / scratch.name).mkdir(exist_ok=True)
    (target / scratch.name / "f").write_bytes(b"survives")
    pid = _client_pid(target)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _running(pid):
        assert time.monotonic() < deadline, "client did not die"
        time.sleep(0.05)
    with pytest.raises(OSError) as err:
        os.statvfs(target)
    assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # the FUSE daemon is gone
    assert mounter.acquire(spec, "vol-2") == target
    assert (target / scratch.name / "f").read_bytes() == b"survives"
    assert mounter.release(spec, "vol-1") is False
    assert mounter.release(spec, "vol-2") is True


