"""Sealing a volume that is still in use (engine/readonly.py): real loop devices, real XFS and
ext4 mounts, a writer holding its file open as a surviving workload would."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from statehold.engine import loop, readonly
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, VolumeMode

pytestmark = [pytest.mark.root]

MiB = 1024 * 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fs", [FsType.XFS, FsType.EXT4])
def test_a_writer_holding_its_file_gets_eio_and_the_bytes_stay(pool: Pool, scratch: Path,
                                                               fs: FsType) -> None:
    pool.create_volume("v", 320 * MiB, mode=VolumeMode.FILESYSTEM, fs=fs)
    target = scratch / "mnt"
    target.mkdir()
    vol = pool.mount("v", target)
    assert vol.device is not None
    fd = os.open(target / "data", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a" * MiB)
        os.fsync(fd)
        sealed = readonly.seal(vol.device)
        assert sealed.filesystem == readonly.SHUTDOWN and sealed.device_readonly and sealed.complete
        before = sha(vol.path)
        with pytest.raises(OSError) as held:
            os.write(fd, b"b" * MiB)
            os.fsync(fd)
        assert held.value.errno in (errno.EIO, errno.EROFS)
        with pytest.raises(OSError) as fresh:
            (target / "other").write_bytes(b"c")
        assert fresh.value.errno in (errno.EIO, errno.EROFS)
        assert sha(vol.path) == before
        again = readonly.seal(vol.device)  # idempotent: shut down again, still refused
        assert again.filesystem == readonly.SHUTDOWN
        with pytest.raises(OSError):
            os.write(fd, b"d")
    finally:
        os.close(fd)
    pool.unmount("v", target)  # a shut-down filesystem still unmounts
    pool.detach("v")
    readonly.set_device_readonly(vol.device, False)  # the next user of /dev/loopN


def test_without_writers_the_filesystem_is_remounted_read_only(pool: Pool, scratch: Path) -> None:
    pool.create_volume("v", 320 * MiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS)
    target = scratch / "mnt"
    target.mkdir()
    vol = pool.mount("v", target)
    assert vol.device is not None
    (target / "data").write_bytes(b"a" * MiB)
    sealed = readonly.seal(vol.device)
    assert sealed.filesystem == readonly.READONLY and sealed.complete
    with pytest.raises(OSError) as refused:
        (target / "data").write_bytes(b"b")
    assert refused.value.errno == errno.EROFS
    assert (target / "data").read_bytes() == b"a" * MiB  # still readable
    assert readonly.seal(vol.device).filesystem == readonly.READONLY  # idempotent
    pool.unmount("v", target)
    pool.detach("v")
    readonly.set_device_readonly(vol.device, False)


def test_a_block_writer_is_refused(pool: Pool) -> None:
    pool.create_volume("v", 64 * MiB, mode=VolumeMode.BLOCK)
    device = pool.attach("v")
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.fsync(fd)
        sealed = readonly.seal(device)
        assert sealed.device_readonly and sealed.filesystem == readonly.NO_FILESYSTEM
        with pytest.raises(OSError) as refused:
            os.pwrite(fd, b"b" * 4096, 0)
        assert refused.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
        other = os.open(device, os.O_WRONLY)  # a fresh writer fares no better
        try:
            with pytest.raises(OSError):
                os.pwrite(other, b"c" * 4096, 0)
        finally:
            os.close(other)
    finally:
        os.close(fd)
    assert pool.get_volume("v").path.read_bytes()[:4096] == b"a" * 4096
    pool.detach("v")
    readonly.set_device_readonly(device, False)


def test_the_next_attach_of_a_sealed_loop_device_is_writable(pool: Pool) -> None:
    pool.create_volume("v", 64 * MiB, mode=VolumeMode.BLOCK)
    device = pool.attach("v")
    readonly.seal(device)
    pool.detach("v")
    assert readonly.device_readonly(device)  # the kernel keeps the flag on the free device
    path = pool.get_volume("v").path
    again = loop.attach(path)  # clears it on whichever device it gets
    try:
        assert not readonly.device_readonly(again)
        fd = os.open(again, os.O_WRONLY)
        try:
            os.pwrite(fd, b"c" * 4096, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        loop.detach(again)
    if again != device:  # another device was free first: clear the flag left on ours
        readonly.set_device_readonly(device, False)
    assert path.read_bytes()[:4096] == b"c" * 4096
