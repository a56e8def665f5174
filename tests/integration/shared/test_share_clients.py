"""Native shares whose filesystem this node has no client for: FAILED_PRECONDITION, nothing
left behind. (This host's kernel has neither NFS nor CephFS; a listener stands in for the
server so the reachability probe passes and ``mount`` itself is what refuses.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine.mounts import mount_at
from statehold.errors import FailedPrecondition
from statehold.shared.share import ShareMounter, ShareSpec

pytestmark = pytest.mark.root


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.2 that accepts connections (and serves nothing)."""
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _kernel_has(fs: str) -> bool:
    return any(line.split()[-1] == fs for line in Path("/proc/filesystems").read_text().splitlines())


@pytest.mark.parametrize(("fstype", "source", "options"), [
    ("nfs", "127.0.0.2:/export", "port={port},nolock"),
    ("cephfs", "127.0.0.2:{port}:/", ""),
])
def test_missing_client_is_failed_precondition(scratch: Path, listener: int, fstype: str, source: str,
                                               options: str) -> None:
    kernel_fs = "ceph" if fstype == "cephfs" else fstype
    if _kernel_has(kernel_fs):
        pytest.skip(f"this kernel has {kernel_fs}: the missing-client path cannot be shown")
    spec = ShareSpec.parse(source.format(port=listener), fstype, options.format(port=listener))
    mounter = ShareMounter(scratch / "node")
    with pytest.raises(FailedPrecondition, match="cannot mount"):
        mounter.acquire(spec, "vol-1")
    assert not mounter.target(spec).exists()
    assert mount_at(mounter.target(spec)) is None
    assert mounter.users(spec) == set()
