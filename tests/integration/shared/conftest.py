"""Fixtures of the shared-storage integration tests: loop-device filesystems, a registry of
exact mount paths that teardown unmounts even when a test failed, and the shared
filesystems the contract suite (test_contract.py) runs over: a plain directory, GlusterFS
and SMB (Samba + smbnetfs), each seen from two "nodes"."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.gluster import GlusterServer, unmount_exact
from tests.fixtures.samba import SambaServer, samba_server  # noqa: F401  (the fixture, for this tier)


@dataclass(frozen=True)
class LoopFs:
    image: Path
    device: str
    mountpoint: Path


def _sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Append every mount path a test (or the code under test) may leave; unmounted after."""
    paths: list[Path] = []
    yield paths
    for path in reversed(paths):
        unmount_exact(path)


@pytest.fixture
def make_loopfs(scratch: Path) -> Iterator[Callable[..., LoopFs]]:
    """make_loopfs(fstype, size_mib, mkfs_args=(), mount_options="") → a mounted loop fs.

    Raises subprocess.CalledProcessError from mount (the test may turn it into a skip)."""
    made: list[LoopFs] = []
    devices: list[str] = []

    def make(fstype: str, size_mib: int = 300, mkfs_args: tuple[str, ...] = (),
             mount_options: str = "") -> LoopFs:
        n = len(devices)
        image = scratch / f"{fstype}-{n}.img"
        mountpoint = scratch / f"{fstype}-{n}"
        mountpoint.mkdir()
        with open(image, "wb") as fh:
            fh.truncate(size_mib * 1024 * 1024)
        _sh(f"mkfs.{fstype}", "-q", *mkfs_args, str(image))
        device = _sh("losetup", "--find", "--show", str(image)).strip()
        devices.append(device)
        argv = ["mount", *(["-o", mount_options] if mount_options else []), device, str(mountpoint)]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
        fs = LoopFs(image, device, mountpoint)
        made.append(fs)
        return fs

    yield make
    for fs in reversed(made):
        unmount_exact(fs.mountpoint)
    for device in reversed(devices):
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60, check=False)


# ---- the shared filesystems the contract suite runs over ------------------------------------
# One fixture per filesystem: two views of one directory, as two nodes see it. A new shared
# backend joins the suite by adding its name to SHARED_FILESYSTEMS and a branch below.

SHARED_FILESYSTEMS = ("dir", "gluster", "smb")
CAPABILITIES_ENV = "STATEHOLD_SHARED_CAPABILITIES"


@dataclass(frozen=True)
class SharedFs:
    """This test's directory on one shared filesystem, as node A and node B see it."""

    kind: str
    a: Path
    b: Path


Capabilities = dict[str, dict[str, str]]


@pytest.fixture(scope="session")
def capabilities() -> Iterator[Capabilities]:
    """What the contract tests measured, per filesystem and table cell. Written as JSON to
    $STATEHOLD_SHARED_CAPABILITIES when set (docs/shared.md's table is copied from it)."""
    found: Capabilities = {}
    yield found
    out = os.environ.get(CAPABILITIES_ENV)
    if out and found:
        merged: Capabilities = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            merged = json.loads(Path(out).read_text())
        for kind, cells in found.items():
            merged.setdefault(kind, {}).update(cells)
        Path(out).write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def gluster_nodes(gluster_server: GlusterServer) -> tuple[Path, Path]:
    """Two GlusterFS client mounts of one volume (two nodes), for the whole session."""
    base = gluster_server.base / "nodes"
    return gluster_server.mount(base / "node-a"), gluster_server.mount(base / "node-b")


@pytest.fixture(scope="session")
def smb_nodes(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """Two smbnetfs mounts of one SMB share (two nodes), for the whole session."""
    server: SambaServer = request.getfixturevalue("samba_server")
    base = server.base / "nodes"
    return server.mount(base / "node-a"), server.mount(base / "node-b")


@pytest.fixture(params=SHARED_FILESYSTEMS)
def shared_fs(request: pytest.FixtureRequest, scratch: Path, mounts: list[Path]) -> Iterator[SharedFs]:
    kind = str(request.param)
    sub = scratch.name
    if kind == "dir":  # one host: node B sees the directory through a bind mount
        a, b = scratch / "share", scratch / "node-b"
        a.mkdir()
        b.mkdir()
        subprocess.run(["mount", "--bind", str(a), str(b)], check=True, capture_output=True, timeout=60)
        mounts.append(b)
        yield SharedFs(kind, a, b)
        return
    node_a, node_b = request.getfixturevalue(f"{kind}_nodes")
    (node_a / sub).mkdir()
    try:
        yield SharedFs(kind, node_a / sub, node_b / sub)
    finally:
        shutil.rmtree(node_a / sub, ignore_errors=True)
