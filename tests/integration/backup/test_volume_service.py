"""One volume backup service for the CLI and the operator, on a real pool (loop device, XFS,
reflinks): either's backup is the other's parent (incremental: only the changed chunk is
read), every backup restores to the bytes it read, user snapshots are never deleted, two
backups of a volume at once do not delete each other's parent, and the snapshots and
manifests of earlier releases still serve as parents."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.backup.volumes import backup_volume, restore_volume
from statehold.controller import backup_runner
from statehold.controller.backups import assign_backup, run_backup
from statehold.controller.restores import assign_restore, run_restore
from statehold.controller.targets import TargetConfig
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import MiB, Volume, VolumeMode
from statehold.kube.kinds import VOLUME_BACKUP, VOLUME_RESTORE
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class, volume_backup

pytestmark = pytest.mark.root
NODE = "n1"
PASSWORD = "correct horse"


def write(path: Path, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path, size: int = 64 * MiB) -> str:
    """Of the first ``size`` bytes (a volume the operator restores may be larger: XFS's
    minimum), and of nothing else."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0 and (block := f.read(min(4 * MiB, size))):
            h.update(block)
            size -= len(block)
    return h.hexdigest()


def block_volume(pool: Pool, name: str = "db") -> Volume:
    """A 64 MiB block volume holding 8 MiB of random data in 1 MiB chunks."""
    vol = pool.create_volume(name, 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    for off in range(0, 16 * MiB, 2 * MiB):
        write(vol.path, off, os.urandom(MiB))
    return vol


def target_config(repo_dir: Path) -> TargetConfig:
    return TargetConfig(name="t", namespace=NS, kind="path", password=PASSWORD, path=str(repo_dir))


@pytest.fixture
def repo_dir(scratch: Path) -> Path:
    return scratch / "repo"


@pytest.fixture
def repo(repo_dir: Path) -> Repository:
    return Repository.init(DirectoryStore(repo_dir), PASSWORD)


@pytest.fixture
def cluster(memory_kube: MemoryKube, repo_dir: Path) -> MemoryKube:
    """A BackupTarget on the same repository the CLI uses, a claim bound to test/db."""
    secret(memory_kube, "pw", password=PASSWORD)
    path_target(memory_kube, path=str(repo_dir))
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data", node=NODE, pool="test", volume="db", size="64Mi")
    return memory_kube


def operator_backup(kube: MemoryKube, node: Node, clock: Any, name: str) -> dict[str, Any]:
    """A VolumeBackup through both operator halves; returns its status."""
    assert assign_backup(kube, volume_backup(kube, name, "data"), clock).outcome == "done"
    result = run_backup(kube, kube.get(VOLUME_BACKUP, name, NS), node, NODE, clock)
    assert result.outcome == "done", result
    status: dict[str, Any] = kube.get(VOLUME_BACKUP, name, NS)["status"]
    return status


def test_cli_and_operator_backups_are_each_others_parents_and_restore_their_bytes(
        cluster: MemoryKube, node: Node, pool: Pool, repo: Repository, repo_dir: Path,
        fake_clock: Any) -> None:
    vol = block_volume(pool)
    digests: dict[str, str] = {}

    cli1 = backup_volume(repo, pool, "db")  # what `statehold backup create test/db` calls
    digests[cli1.backup_id] = sha256(vol.path)
    assert cli1.parent_id is None and cli1.bytes_read == 8 * MiB

    write(vol.path, 4 * MiB + 4096, os.urandom(64 << 10))  # inside one 1 MiB chunk
    op = operator_backup(cluster, node, fake_clock, "vb1")
    digests[op["backupId"]] = sha256(vol.path)
    assert op["parentBackupId"] == cli1.backup_id  # the CLI's backup is the operator's parent
    assert op["bytesDone"] == MiB                  # only the changed chunk was read

    write(vol.path, 10 * MiB, os.urandom(64 << 10))
    cli2 = backup_volume(repo, pool, "db")
    digests[cli2.backup_id] = sha256(vol.path)
    assert cli2.parent_id == op["backupId"]  # and the operator's is the CLI's
    assert cli2.bytes_read == MiB
    assert [s.name for s in pool.list_snapshots("db")] == [cli2.snapshot]  # the next parent only

    # one manifest convention, whoever made the backup
    for bid in digests:
        m = repo.load_manifest(bid)
        assert m.snapshot is not None and m.snapshot.startswith("test/db-bk-")
        assert m.labels["mode"] == "block"
    assert repo.load_manifest(op["backupId"]).labels["volumebackup"] == "vb1"

    for i, (bid, digest) in enumerate(digests.items()):  # the CLI's restore of each
        restored = restore_volume(repo, bid, pool, f"copy-{i}")
        assert restored.mode is VolumeMode.BLOCK and sha256(restored.path) == digest
    # the operator's restore of its own backup, and of the CLI's backups through its runner
    r = cluster.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
                        "metadata": {"name": "r1", "namespace": NS},
                        "spec": {"backup": "vb1", "persistentVolumeClaimName": "restored"}})
    assert assign_restore(cluster, r, fake_clock).outcome == "done"
    result = run_restore(cluster, cluster.get(VOLUME_RESTORE, "r1", NS), node, NODE, fake_clock)
    assert result.outcome == "done", result
    handle = cluster.get(VOLUME_RESTORE, "r1", NS)["status"]["volumeHandle"]
    restored = pool.get_volume(handle.partition("/")[2])
    assert sha256(restored.path) == digests[op["backupId"]]
    for i, bid in enumerate((cli1.backup_id, cli2.backup_id)):
        pool.create_volume(f"op-copy-{i}", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
        backup_runner.restore_into(target_config(repo_dir), bid, pool, f"op-copy-{i}")
        assert sha256(pool.get_volume(f"op-copy-{i}").path) == digests[bid]


def test_user_snapshots_survive_backups_by_either_path(
        cluster: MemoryKube, node: Node, pool: Pool, repo: Repository, fake_clock: Any) -> None:
    vol = block_volume(pool)
    user = [pool.create_snapshot("db", name).name for name in ("db-before-upgrade", "db-bk-monday")]
    # someone backed a user snapshot up: the service may use it as a parent, never delete it
    by_hand = create_backup(repo, pool.get_snapshot("db-before-upgrade").path, volume=vol.id,
                            snapshot="test/db-before-upgrade")
    first = backup_volume(repo, pool, "db")
    assert first.parent_id == by_hand.backup_id and first.bytes_read == 0
    write(vol.path, 0, os.urandom(4096))
    operator_backup(cluster, node, fake_clock, "vb1")
    write(vol.path, 2 * MiB, os.urandom(4096))
    last = backup_volume(repo, pool, "db")
    names = {s.name for s in pool.list_snapshots("db")}
    assert names == {*user, last.snapshot}


def test_two_backups_of_a_volume_at_once_do_not_delete_each_others_parent(
        pool: Pool, repo: Repository, repo_dir: Path) -> None:
    vol = block_volume(pool)
    first = backup_volume(repo, pool, "db")
    write(vol.path, 0, os.urandom(4096))
    results: dict[str, Any] = {}
    started: list[threading.Thread] = []

    def operator() -> None:
        try:
            results["operator"] = backup_runner.back_up_volume(pool, "db", target_config(repo_dir),
                                                               key="uid-2")
        except Exception as exc:  # reported below
            results["operator"] = exc

    def cli_progress(done: int, total: int) -> None:
        if not started:  # the CLI's backup is reading: the operator's starts now
            t = threading.Thread(target=operator)
            started.append(t)
            t.start()
            time.sleep(0.5)  # it would pick the same parent and delete it, were it not waiting

    cli = backup_volume(repo, pool, "db", progress=cli_progress)
    started[0].join(60)
    op = results["operator"]
    assert not isinstance(op, Exception), op
    assert cli.parent_id == first.backup_id and cli.bytes_read == MiB
    assert op.parent_id == cli.backup_id and op.bytes_read == 0  # it waited, then read nothing new
    assert [s.name for s in pool.list_snapshots("db")] == [op.snapshot]


@pytest.mark.parametrize(("legacy_name", "recorded"), [
    ("vb-5f0c1e2a8b9d4c3ea1f20b1c", "{name}"),                 # the operator's, bare name
    ("db-bk-20260105t100000-1a2b", "test/{name}"),             # the CLI's, pool/name
])
def test_an_earlier_releases_backup_is_a_parent_and_its_snapshot_is_cleaned_up(
        pool: Pool, repo: Repository, legacy_name: str, recorded: str) -> None:
    vol = block_volume(pool)
    snap = pool.create_snapshot("db", legacy_name)
    old = create_backup(repo, snap.path, volume=vol.id, snapshot=recorded.format(name=legacy_name))
    write(vol.path, 6 * MiB, os.urandom(4096))
    new = backup_volume(repo, pool, "db")
    assert new.parent_id == old.backup_id and new.bytes_read == MiB
    assert [s.name for s in pool.list_snapshots("db")] == [new.snapshot]


def test_a_retried_keyed_backup_is_the_committed_one_and_a_failed_one_keeps_the_parent(
        pool: Pool, repo: Repository, repo_dir: Path) -> None:
    block_volume(pool)
    target = target_config(repo_dir)
    first = backup_runner.back_up_volume(pool, "db", target, key="uid-1")
    again = backup_runner.back_up_volume(pool, "db", target, key="uid-1")
    assert again.backup_id == first.backup_id and repo.backup_ids() == [first.backup_id]

    def fail(done: int, total: int) -> None:
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        backup_volume(repo, pool, "db", progress=fail)
    assert [s.name for s in pool.list_snapshots("db")] == [first.snapshot]


def test_retention_keeps_the_newest_backups_of_the_volume(pool: Pool, repo: Repository,
                                                          repo_dir: Path) -> None:
    vol = block_volume(pool)
    done = []
    for i in range(3):
        write(vol.path, i * MiB, os.urandom(4096))
        done.append(backup_runner.back_up_volume(pool, "db", target_config(repo_dir), key=f"uid-{i}",
                                                 keep_last=2))
    assert done[2].pruned == (done[0].backup_id,)
    assert sorted(repo.backup_ids()) == sorted(d.backup_id for d in done[1:])
