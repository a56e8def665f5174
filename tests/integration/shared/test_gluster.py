"""A real GlusterFS volume mounted twice (two "nodes"): shared data, concurrent writers,
accounting, deletion policies, ref-counted native mounts and bad shares."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from statehold.engine.mounts import mount_at
from statehold.engine.mounts import mounts as read_mounts
from statehold.errors import InvalidArgument, Unavailable
from statehold.shared.root import SharedRoot
from statehold.shared.share import ShareMounter, ShareSpec
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import CopyMethod, DeletionPolicy, QuotaKind, VolumeEvent
from tests.fixtures.gluster import GlusterServer

pytestmark = pytest.mark.root
MiB = 1024 * 1024


@pytest.fixture
def spec(gluster_server: GlusterServer) -> ShareSpec:
    return ShareSpec.parse(gluster_server.source, "glusterfs", gluster_server.mount_options("t"))


@pytest.fixture
def nodes(scratch: Path, spec: ShareSpec, mounts: list[Path]) -> tuple[SharedRoot, SharedRoot]:
    """The same share mounted natively by two node agents (separate state directories).
    Each test works in its own subdirectory of the share."""
    roots = []
    for node in ("node-a", "node-b"):
        mounter = ShareMounter(scratch / node)
        mounts.append(mounter.target(spec))
        roots.append(mounter.acquire(spec, "test"))
    assert roots[0] != roots[1]
    sub = scratch.name
    (roots[0] / sub).mkdir(exist_ok=True)
    return SharedRoot(roots[0] / sub), SharedRoot(roots[1] / sub)


def test_two_nodes_see_the_same_volumes_and_bytes(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    vol = a.create_volume("pvc-x", 10 * MiB)
    seen = b.get_volume("pvc-x")
    assert seen.path == b.path / "pvc-x" and seen.size == vol.size and seen.created == vol.created
    payload = os.urandom(MiB)
    (a.path / "pvc-x" / "f").write_bytes(payload)
    assert (b.path / "pvc-x" / "f").read_bytes() == payload
    assert b.create_volume("pvc-x", 10 * MiB).size == 10 * MiB  # idempotent from the other node
    assert b.enforcer.kind == QuotaKind.ACCOUNTING


def test_concurrent_writers_on_two_nodes(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    a.create_volume("pvc-w", 64 * MiB)
    chunk, count = 64 * 1024, 32
    shared_file = "interleaved"
    for root in (a,):
        with open(root.path / "pvc-w" / shared_file, "wb") as fh:
            fh.truncate(2 * chunk * count)
    errors: list[BaseException] = []

    def writer(root: SharedRoot, index: int) -> None:
        try:
            fd = os.open(root.path / "pvc-w" / shared_file, os.O_WRONLY)
            try:
                for i in range(count):  # disjoint, interleaved ranges of one file
                    os.pwrite(fd, bytes([index + 1]) * chunk, (2 * i + index) * chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            for i in range(count):
                (root.path / "pvc-w" / f"w{index}-{i}").write_bytes(bytes([index]) * 1000)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r, i)) for i, r in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    data = (a.path / "pvc-w" / shared_file).read_bytes()
    for i in range(2 * count):
        assert data[i * chunk:(i + 1) * chunk] == bytes([i % 2 + 1]) * chunk
    names = sorted(p.name for p in (b.path / "pvc-w").iterdir())
    assert len(names) == 2 * count + 1


def test_concurrent_creates_from_two_nodes_agree(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    results: dict[str, list[object]] = {"a": [], "b": []}

    def create(root: SharedRoot, key: str) -> None:
        for i in range(6):
            results[key].append(root.create_volume(f"pvc-{i}", MiB).size)

    threads = [threading.Thread(target=create, args=(r, k)) for r, k in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {"a": [MiB] * 6, "b": [MiB] * 6}
    assert sorted(v.name for v in b.list_volumes()) == [f"pvc-{i}" for i in range(6)]


def test_over_size_is_reported_on_gluster(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    events: list[VolumeEvent] = []
    b.on_event = events.append
    a.create_volume("pvc-o", MiB)
    (a.path / "pvc-o" / "big").write_bytes(os.urandom(3 * MiB))
    usage = b.usage("pvc-o")
    assert usage.abnormal and usage.used >= 3 * MiB
    assert [e.reason for e in events] == ["OverSize"]
    a.expand_volume("pvc-o", 8 * MiB)
    assert not b.usage("pvc-o").abnormal


def test_deletion_policies_on_gluster(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    for name, policy in (("pvc-d", DeletionPolicy.DELETE), ("pvc-r", DeletionPolicy.RETAIN),
                         ("pvc-a", DeletionPolicy.ARCHIVE)):
        a.create_volume(name, MiB, policy=policy)
        (a.path / name / "f").write_bytes(name.encode())
    assert b.delete_volume("pvc-d") is None
    assert not (a.path / "pvc-d").exists()
    assert b.delete_volume("pvc-r") == b.path / "pvc-r"
    assert (a.path / "pvc-r" / "f").read_bytes() == b"pvc-r"
    archived = b.delete_volume("pvc-a")
    assert archived is not None
    assert (a.meta / "archive" / archived.name / "f").read_bytes() == b"pvc-a"
    assert [v.name for v in a.list_volumes()] == []


def test_snapshot_on_gluster_is_a_plain_copy(nodes: tuple[SharedRoot, SharedRoot]) -> None:
    a, b = nodes
    a.create_volume("pvc-s", MiB)
    (a.path / "pvc-s" / "f").write_bytes(b"one")
    snap = SnapshotStore(a).create("pvc-s", "snap")
    assert snap.copy_method == CopyMethod.COPY  # FUSE has no reflink: reported as such
    (b.path / "pvc-s" / "f").write_bytes(b"two")
    assert (b.meta / "snapshots" / "snap" / "f").read_bytes() == b"one"


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


def test_backup_on_one_node_restores_on_the_other(nodes: tuple[SharedRoot, SharedRoot],
                                                  scratch: Path) -> None:
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.shared.backups import backup_volume, restore_volume

    a, b = nodes
    repo = Repository.init(DirectoryStore(scratch / "repo", create=True), "pw", chunk_size=1 * MiB)
    vol = a.create_volume("pvc-bk", 8 * MiB)
    payload = os.urandom(2 * MiB + 3)
    (vol.path / "d").mkdir()
    (vol.path / "d" / "blob").write_bytes(payload)
    m = backup_volume(repo, a, "pvc-bk", volume_key="shared/k/pvc-bk")
    restored = restore_volume(repo, m.backup_id, b, "pvc-bk-2")
    assert (a.path / "pvc-bk-2" / "d" / "blob").read_bytes() == payload
    assert restored.size == 8 * MiB and a.get_volume("pvc-bk-2").size == 8 * MiB
