"""The shared-volume contract, one suite over every shared filesystem: a plain directory,
GlusterFS (glusterd + FUSE client) and SMB (smbd + smbnetfs), each seen by two "nodes"
(two mounts of one share; a bind mount for the directory). See conftest.shared_fs.

What a filesystem cannot do is part of the contract: where SMB has no hard limit, no
symlinks or case-sensitive names, the test asserts the documented answer (an OverSize
event, a FailedPrecondition before anything is created) instead of skipping. Each test
that measures a cell of docs/shared.md's table records it (``capabilities``); run with
STATEHOLD_SHARED_CAPABILITIES=<file> to get them as JSON.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.repository import Repository
from statehold.csi.backend import (
    AccessMode,
    BackendConfig,
    Capability,
    ContentSource,
    PublishRequest,
    StageRequest,
    VolumeRequest,
)
from statehold.csi.backend_shared import SharedBackend
from statehold.engine.mounts import mount_at
from statehold.errors import FailedPrecondition, NotFound, Unavailable
from statehold.shared.backups import backup_volume, restore_volume
from statehold.shared.metadata import NEXT
from statehold.shared.registry import RootSpec
from statehold.shared.root import SharedRoot
from statehold.shared.service import SharedVolumes, UnknownCapacity
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import DeletionPolicy, VolumeEvent
from tests.fixtures.netns import wait_for
from tests.integration.shared.conftest import Capabilities, SharedFs

pytestmark = pytest.mark.root
MiB = 1024 * 1024
RWX = Capability(mode=AccessMode.MULTI_NODE_MULTI_WRITER, block=False)
ROX = Capability(mode=AccessMode.MULTI_NODE_READER_ONLY, block=False)


def nodes(fs: SharedFs) -> tuple[SharedRoot, SharedRoot]:
    return SharedRoot(fs.a), SharedRoot(fs.b)


def record(capabilities: Capabilities, fs: SharedFs, cell: str, value: str) -> None:
    capabilities.setdefault(fs.kind, {})[cell] = value


def test_two_nodes_see_the_same_volumes_and_bytes(shared_fs: SharedFs, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    vol = a.create_volume("pvc-x", 10 * MiB)
    seen = b.get_volume("pvc-x")
    assert seen.path == b.path / "pvc-x" and seen.size == vol.size and seen.created == vol.created
    payload = os.urandom(MiB)
    (a.path / "pvc-x" / "f").write_bytes(payload)
    assert (b.path / "pvc-x" / "f").read_bytes() == payload
    (b.path / "pvc-x" / "g").write_bytes(b"from b")
    assert (a.path / "pvc-x" / "g").read_bytes() == b"from b"
    assert b.create_volume("pvc-x", 10 * MiB).size == 10 * MiB  # idempotent from the other node
    record(capabilities, shared_fs, "rwx", "yes: two mounts see each other's writes")


def test_concurrent_writers_on_two_nodes(shared_fs: SharedFs) -> None:
    a, b = nodes(shared_fs)
    a.create_volume("pvc-w", 64 * MiB)
    chunk, count = 64 * 1024, 32
    (a.path / "pvc-w" / "interleaved").touch()
    os.truncate(a.path / "pvc-w" / "interleaved", 2 * chunk * count)  # smbnetfs: no ftruncate
    errors: list[BaseException] = []

    def writer(root: SharedRoot, index: int) -> None:
        try:
            fd = os.open(root.path / "pvc-w" / "interleaved", os.O_WRONLY)
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
        t.join()
    assert errors == []
    data = (a.path / "pvc-w" / "interleaved").read_bytes()
    for i in range(2 * count):
        assert data[i * chunk:(i + 1) * chunk] == bytes([i % 2 + 1]) * chunk
    assert len(list((b.path / "pvc-w").iterdir())) == 2 * count + 1


def test_concurrent_creates_from_two_nodes_agree(shared_fs: SharedFs, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    results: dict[str, list[object]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def create(root: SharedRoot, key: str) -> None:
        try:
            for i in range(6):
                results[key].append(root.create_volume(f"pvc-{i}", MiB).size)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(r, k)) for r, k in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {"a": [MiB] * 6, "b": [MiB] * 6}  # one create each, the other found it
    assert [(v.name, v.size) for v in b.list_volumes()] == [(f"pvc-{i}", MiB) for i in range(6)]
    assert not (a.meta / "lock.d").exists()
    record(capabilities, shared_fs, "lock", "flock" if a.traits.shared_locks else "lock directory (mkdir)")


def test_metadata_replaced_on_one_node_is_never_missing_on_the_other(shared_fs: SharedFs,
                                                                     capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    a.create_volume("pvc-m", MiB)
    sizes: list[int] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                sizes.append(b.get_volume("pvc-m").size)
            except BaseException as exc:  # NotFound here would be a silent wrong answer
                failures.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(2, 82):
            a.expand_volume("pvc-m", step * MiB)
    finally:
        done.set()
        thread.join()
    assert failures == []
    assert sizes and sizes == sorted(sizes)  # each read whole, old or new, in order
    assert b.get_volume("pvc-m").size == 81 * MiB
    assert not list((a.meta / "volumes").glob(f"*{NEXT}"))
    record(capabilities, shared_fs, "replace",
           "rename over" if a.traits.atomic_replace else "in steps through .next")


def test_a_replacement_cut_between_its_steps_reads_as_the_new_file(shared_fs: SharedFs) -> None:
    a, b = nodes(shared_fs)
    a.create_volume("pvc-c", MiB)
    sidecar = a.meta / "volumes" / "pvc-c.json"
    os.rename(sidecar, sidecar.with_name(sidecar.name + NEXT))  # the old one removed, then a crash
    assert b.get_volume("pvc-c").size == MiB
    assert [v.name for v in b.list_volumes()] == ["pvc-c"]
    b.expand_volume("pvc-c", 3 * MiB)  # the next write settles it
    assert sidecar.exists() and not sidecar.with_name(sidecar.name + NEXT).exists()
    assert a.get_volume("pvc-c").size == 3 * MiB


def test_over_size_is_reported_and_expansion_is_online(shared_fs: SharedFs,
                                                       capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    events: list[VolumeEvent] = []
    b.on_event = events.append
    a.create_volume("pvc-o", MiB)
    (a.path / "pvc-o" / "big").write_bytes(os.urandom(3 * MiB))  # accepted: nothing enforces
    usage = b.usage("pvc-o")
    assert usage.abnormal and usage.used >= 3 * MiB
    assert [e.reason for e in events] == ["OverSize"]
    assert not a.enforcer.enforcing
    record(capabilities, shared_fs, "hard_limit", f"no ({a.enforcer.kind}: OverSize event)")
    a.expand_volume("pvc-o", 8 * MiB)
    assert b.get_volume("pvc-o").size == 8 * MiB and not b.usage("pvc-o").abnormal
    record(capabilities, shared_fs, "expansion", "online (new size recorded, seen by every node)")


def test_deletion_policies(shared_fs: SharedFs) -> None:
    a, b = nodes(shared_fs)
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


def test_snapshot_is_a_copy_of_its_moment(shared_fs: SharedFs, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    a.create_volume("pvc-s", MiB)
    (a.path / "pvc-s" / "f").write_bytes(b"one")
    snap = SnapshotStore(a).create("pvc-s", "snap")
    (b.path / "pvc-s" / "f").write_bytes(b"two")
    assert (b.meta / "snapshots" / "snap" / "f").read_bytes() == b"one"
    assert [s.name for s in SnapshotStore(b).list("pvc-s")] == ["snap"]
    record(capabilities, shared_fs, "snapshot", str(snap.copy_method))


def test_backup_on_one_node_restores_on_the_other(shared_fs: SharedFs, scratch: Path,
                                                  capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    repo = Repository.init(DirectoryStore(scratch / "repo", create=True), "pw", chunk_size=1 * MiB)
    vol = a.create_volume("pvc-bk", 8 * MiB)
    payload = os.urandom(2 * MiB + 3)
    (vol.path / "d").mkdir()
    (vol.path / "d" / "blob").write_bytes(payload)
    os.chmod(vol.path / "d" / "blob", 0o640)
    kept_here = stat.S_IMODE(os.stat(vol.path / "d" / "blob").st_mode) == 0o640
    m = backup_volume(repo, a, "pvc-bk", volume_key="shared/k/pvc-bk")
    restored = restore_volume(repo, m.backup_id, b, "pvc-bk-2")
    assert (a.path / "pvc-bk-2" / "d" / "blob").read_bytes() == payload
    assert restored.size == 8 * MiB and a.get_volume("pvc-bk-2").size == 8 * MiB
    modes = "kept" if stat.S_IMODE(os.stat(a.path / "pvc-bk-2" / "d" / "blob").st_mode) == 0o640 \
        else "the server's"
    assert (modes == "kept") == kept_here  # a restore keeps what the filesystem can keep
    record(capabilities, shared_fs, "backup", f"file tree (modes: {modes})")


def _tree_backup(scratch: Path, build: str) -> tuple[Repository, str]:
    """A backup taken on a POSIX root (a plain directory) with content SMB cannot hold."""
    repo = Repository.init(DirectoryStore(scratch / f"repo-{build}", create=True), "pw", chunk_size=MiB)
    (scratch / f"src-{build}").mkdir()
    src = SharedRoot(scratch / f"src-{build}")
    vol = src.create_volume("pvc-src", 4 * MiB)
    if build == "case":
        (vol.path / "README").write_bytes(b"upper")
        (vol.path / "readme").write_bytes(b"lower")
    else:
        (vol.path / "target").write_bytes(b"t")
        os.symlink("target", vol.path / "link")
    return repo, backup_volume(repo, src, "pvc-src", volume_key="shared/src/pvc-src").backup_id


def test_names_differing_only_by_case(shared_fs: SharedFs, scratch: Path, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    repo, backup_id = _tree_backup(scratch, "case")
    if a.traits.case_sensitive:
        restore_volume(repo, backup_id, b, "pvc-case")
        assert (a.path / "pvc-case" / "README").read_bytes() == b"upper"
        assert (a.path / "pvc-case" / "readme").read_bytes() == b"lower"
    else:  # two files would become one: refused before anything is made
        with pytest.raises(FailedPrecondition, match="differ only by case: README and readme"):
            restore_volume(repo, backup_id, b, "pvc-case")
        assert not b.exists("pvc-case") and not (a.path / "pvc-case").exists()
    record(capabilities, shared_fs, "case_sensitive", "yes" if a.traits.case_sensitive else "no (probed)")


def test_symlinks_in_a_restore(shared_fs: SharedFs, scratch: Path, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    repo, backup_id = _tree_backup(scratch, "link")
    if a.traits.symlinks:
        restore_volume(repo, backup_id, b, "pvc-link")
        assert os.readlink(a.path / "pvc-link" / "link") == "target"
    else:
        with pytest.raises(FailedPrecondition, match="stores no symlinks"):
            restore_volume(repo, backup_id, b, "pvc-link")
        assert not b.exists("pvc-link") and not (a.path / "pvc-link").exists()
    record(capabilities, shared_fs, "symlinks", "yes" if a.traits.symlinks else "no (probed)")


def test_free_space_is_reported_or_said_to_be_unknown(shared_fs: SharedFs, scratch: Path,
                                                      capabilities: Capabilities) -> None:
    volumes = SharedVolumes(scratch / "home")
    spec = RootSpec.from_parameters({"sharedRoot": str(shared_fs.a)})
    if SharedRoot(shared_fs.a).traits.reports_size:
        assert volumes.available_bytes(spec) > 0
        record(capabilities, shared_fs, "capacity", "statfs")
    else:  # 0 blocks from statfs: unknown, never "full"
        with pytest.raises(UnknownCapacity, match="reports no size"):
            volumes.available_bytes(spec)
        record(capabilities, shared_fs, "capacity", "unknown (statfs reports 0 blocks)")


def _deleted(node: SharedRoot, name: str) -> bool:
    """One delete call: True when it finished, False when refused for now (Unavailable)."""
    try:
        node.delete_volume(name)
    except Unavailable:
        return False
    return True


def test_delete_while_the_other_node_has_a_file_open(shared_fs: SharedFs, capabilities: Capabilities) -> None:
    a, b = nodes(shared_fs)
    a.create_volume("pvc-busy", MiB)
    (a.path / "pvc-busy" / "f").write_bytes(b"open elsewhere")
    with open(b.path / "pvc-busy" / "f", "rb") as held:
        try:
            a.delete_volume("pvc-busy")
            outcome = "deleted"
        except Unavailable:  # SMB: the server refuses to delete a file a client has open
            outcome = "refused (Unavailable) while open; the retry finishes it"
        assert held.read() in (b"open elsewhere", b"")
    if outcome != "deleted":
        assert a.exists("pvc-busy")  # recorded as deleting: finished by a later call
        # b's close reaches the SMB server through its FUSE client after close() returned
        # (seen: the next call still refused): retried as the provisioner retries Unavailable
        wait_for(lambda: _deleted(a, "pvc-busy"), timeout=60, what="the retried delete")
    assert not a.exists("pvc-busy") and not (a.path / "pvc-busy").exists()
    record(capabilities, shared_fs, "delete_open", outcome)


def _backend(home: Path, node: str, events: list[VolumeEvent]) -> SharedBackend:
    return SharedBackend(BackendConfig(home=home, node_id=node, allowed_roots=(home.parent,)),
                         on_event=events.append)


def _request(name: str, params: dict[str, str], size: int = 4 * MiB,
             source: ContentSource | None = None) -> VolumeRequest:
    return VolumeRequest(name=name, required_bytes=size, limit_bytes=0, capabilities=(RWX,),
                         parameters={"type": "shared", **params}, source=source)


def _stage_and_publish(be: SharedBackend, vid: str, ctx: dict[str, str], base: Path, mounts: list[Path],
                       cap: Capability = RWX) -> Path:
    staging, target = base / "staging", base / "target"
    mounts += [staging, target]
    be.node_stage(StageRequest(volume_id=vid, staging_path=staging, capability=cap, context=ctx))
    be.node_publish(PublishRequest(volume_id=vid, target_path=target, staging_path=staging,
                                   capability=cap, readonly=False, context=ctx))
    return target


def test_host_based_lifecycle_through_the_csi_backend(shared_fs: SharedFs, scratch: Path,
                                                      mounts: list[Path]) -> None:
    share = shared_fs.a
    events: list[VolumeEvent] = []
    be = _backend(scratch / "home", "n1", events)
    params = {"sharedRoot": str(share), "deletionPolicy": "archive"}
    info = be.create_volume(_request("pvc-1", params))
    assert info.volume_id.startswith("shared/") and info.capacity_bytes == 4 * MiB and not info.block
    assert be.create_volume(_request("pvc-1", params)) == info
    assert [v.volume_id for v in be.list_volumes()] == [info.volume_id]

    ctx = dict(info.context)
    target = _stage_and_publish(be, info.volume_id, ctx, scratch / "pod1", mounts)
    _stage_and_publish(be, info.volume_id, ctx, scratch / "pod1", mounts)  # idempotent
    (target / "f").write_bytes(b"hello")
    assert (shared_fs.b / "pvc-1" / "f").read_bytes() == b"hello"

    ro = _stage_and_publish(be, info.volume_id, ctx, scratch / "pod2", mounts, cap=ROX)
    assert (ro / "f").read_bytes() == b"hello"
    with pytest.raises(OSError) as err:
        (ro / "g").write_bytes(b"no")
    assert err.value.errno == errno.EROFS

    stats = be.node_stats(info.volume_id, target)
    assert stats.bytes_total == 4 * MiB and not stats.abnormal
    (target / "big").write_bytes(os.urandom(5 * MiB))
    stats = be.node_stats(info.volume_id, target)
    assert stats.abnormal and stats.bytes_used > 4 * MiB and stats.bytes_available == 0
    assert [e.reason for e in events] == ["OverSize"]
    assert be.get_volume(info.volume_id).abnormal

    grown = be.expand_volume(info.volume_id, 16 * MiB, 0)
    assert grown.capacity_bytes == 16 * MiB and not grown.node_expansion_required
    assert be.node_expand(info.volume_id, target, 16 * MiB) == 16 * MiB
    assert not be.node_stats(info.volume_id, target).abnormal
    assert be.expand_volume(info.volume_id, MiB, 0).capacity_bytes == 16 * MiB  # never shrinks

    snap = be.create_snapshot(info.volume_id, "snap-1", {})
    assert snap.snapshot_id.startswith("shared/") and snap.source_volume_id == info.volume_id
    assert be.list_snapshots(info.volume_id) == [snap]
    clone = be.create_volume(_request("pvc-2", params, size=16 * MiB,
                                      source=ContentSource("snapshot", snap.snapshot_id)))
    assert clone.source == ContentSource("snapshot", snap.snapshot_id)
    assert (shared_fs.b / "pvc-2" / "f").read_bytes() == b"hello"

    for pod in ("pod1", "pod2"):
        be.node_unpublish(info.volume_id, scratch / pod / "target")
        be.node_unpublish(info.volume_id, scratch / pod / "target")
        be.node_unstage(info.volume_id, scratch / pod / "staging")
        be.node_unstage(info.volume_id, scratch / pod / "staging")
        assert mount_at(scratch / pod / "staging") is None
    be.delete_volume(info.volume_id)
    with pytest.raises(NotFound):
        be.get_volume(info.volume_id)
    with pytest.raises(NotFound):
        be.delete_volume(info.volume_id)
    [archived] = (share / ".statehold" / "archive").iterdir()
    assert (archived / "f").read_bytes() == b"hello"
    be.delete_snapshot(snap.snapshot_id)
    with pytest.raises(NotFound):
        be.get_snapshot(snap.snapshot_id)
