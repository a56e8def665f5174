"""Fixtures of the shared-storage integration tests: loop-device filesystems and a
registry of exact mount paths that teardown unmounts even when a test failed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.gluster import unmount_exact


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
