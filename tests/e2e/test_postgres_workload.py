"""PostgreSQL as the workload: a database on a Statehold volume, snapshotted while it writes.

The user's promise under test: a snapshot taken through the CSI API while PostgreSQL is
committing transactions (fsfreeze first) clones into a volume on which a second PostgreSQL
starts, recovers from its WAL, and holds every row committed before the snapshot — and
none of the changes made after it. PostgreSQL listens on a unix socket only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.integration.csi.harness import NODE_ID, Driver, GiB, mount_cap, running_driver

pytestmark = [pytest.mark.root]

TOPOLOGY = {"topology.statehold.io/node": NODE_ID}
ROWS = 20_000
PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


@pytest.fixture
def driver(node: Node, pool: Pool) -> Iterator[Driver]:
    with running_driver(node, node.home) as d:
        yield d


def _pg_bin(tool: str) -> str:
    if not PG_BINS:
        pytest.fail("PostgreSQL is not installed (make test installs the Debian package)")
    return os.path.join(PG_BINS[-1], tool)


def _as_postgres(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=False, **kw  # type: ignore[call-overload]
    )
    assert proc.returncode == 0, f"{argv[0]} failed: {proc.stderr}"
    return proc


def _traversable(path: Path, top: Path) -> None:
    """Let the postgres user walk from ``top`` (the test's own scratch) down to ``path``."""
    for p in [path, *path.parents]:
        p.chmod(p.stat().st_mode | 0o011)
        if p == top:
            return


class Postgres:
    """One PostgreSQL instance on a data directory, reachable on a private unix socket."""

    def __init__(self, data: Path, sockdir: Path) -> None:
        self.data, self.sockdir = data, sockdir
        sockdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(sockdir, "postgres", "postgres")
        _traversable(sockdir.parent, sockdir.parent.parent.parent)
        self.started = False

    def start(self) -> None:
        opts = f"-c listen_addresses='' -k {self.sockdir} -p 5432 -c fsync=on"
        # -l: the server's output goes to a file, so no pipe of ours is held open by it
        log = self.sockdir / "server.log"
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log),
             "-o", opts, "-w", "-t", "120", "start"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"}, check=False,
        )
        assert proc.returncode == 0, log.read_text() if log.exists() else "pg_ctl start failed"
        self.started = True

    def stop(self) -> None:
        if self.started:
            subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            self.started = False

    def sql(self, query: str) -> str:
        out = _as_postgres([_pg_bin("psql"), "-h", str(self.sockdir), "-p", "5432", "-d", "postgres",
                            "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query])
        return out.stdout.strip()

    def pgbench(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["runuser", "-u", "postgres", "--", _pg_bin("pgbench"), "-h", str(self.sockdir), "-p", "5432",
             *args, "postgres"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


@contextlib.contextmanager
def _published(d: Driver, vol: pb.Volume, tag: str) -> Iterator[Path]:
    cap = mount_cap("xfs")
    staging, target = d.staging(tag), d.target(tag)
    d.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=cap,
        volume_context=vol.volume_context))
    d.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=cap, volume_context=vol.volume_context))
    try:
        yield target
    finally:
        d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id,
                                                                  target_path=str(target)))
        d.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id,
                                                              staging_target_path=str(staging)))


def _create(d: Driver, name: str, source: pb.VolumeContentSource | None = None) -> pb.Volume:
    req = pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=1 * GiB),
        volume_capabilities=[mount_cap("xfs")], parameters={"csi.storage.k8s.io/fstype": "xfs"},
        accessibility_requirements=pb.TopologyRequirement(requisite=[pb.Topology(segments=TOPOLOGY)]),
    )
    if source is not None:
        req.volume_content_source.CopyFrom(source)
    return d.controller.CreateVolume(req).volume


def test_postgres_snapshot_taken_under_load_clones_into_a_consistent_database(driver: Driver) -> None:
    d = driver
    vol = _create(d, "pgdata-0")
    sock_root = Path(os.path.realpath(d.kubelet)).parent / "pgsock"
    with _published(d, vol, "pg-primary") as mnt:
        data = mnt / "pgdata"
        data.mkdir()
        _traversable(mnt, d.kubelet.parent.parent)
        shutil.chown(mnt, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                     env={**os.environ, "LC_ALL": "C"})
        primary = Postgres(data, sock_root / "primary")
        load: subprocess.Popen[str] | None = None
        try:
            primary.start()
            primary.sql("CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL)")
            primary.sql(f"INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g")
            committed = primary.sql("SELECT count(*), sum(hashtext(payload)) FROM items")
            _as_postgres([_pg_bin("pgbench"), "-h", str(primary.sockdir), "-p", "5432", "-i", "-s", "1",
                          "-q", "postgres"])
            # concurrent writers while the snapshot is taken: the freeze must not lose or tear them
            load = primary.pgbench("-n", "-c", "2", "-t", "1500")

            snap = d.controller.CreateSnapshot(pb.CreateSnapshotRequest(
                source_volume_id=vol.volume_id, name="pgdata-0-snap")).snapshot
            assert snap.ready_to_use

            _out, err = load.communicate(timeout=600)
            assert load.returncode == 0, err
            primary.sql("DELETE FROM items WHERE id <= 10000")  # after the snapshot: not in the clone
            assert primary.sql("SELECT count(*) FROM items") == str(ROWS - 10_000)
        finally:
            if load is not None and load.poll() is None:
                load.kill()
                load.wait()
            primary.stop()

    clone = _create(d, "pgdata-clone", pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))
    with _published(d, clone, "pg-clone") as mnt:
        data = mnt / "pgdata"
        # the snapshot caught a running server: its pid file names a process of this host
        (data / "postmaster.pid").unlink()
        replica = Postgres(data, sock_root / "clone")
        try:
            replica.start()  # crash recovery from the WAL inside the snapshot
            assert replica.sql("SELECT count(*), sum(hashtext(payload)) FROM items") == committed
            # pgbench's tables are readable and internally consistent after recovery
            accounts = int(replica.sql("SELECT count(*) FROM pgbench_accounts"))
            assert accounts == 100_000
            # (the snapshot may land before pgbench's first transaction: empty sums are 0)
            balance = replica.sql(
                "SELECT coalesce(sum(abalance), 0) = "
                "(SELECT coalesce(sum(delta), 0) FROM pgbench_history) FROM pgbench_accounts"
            )
            assert balance == "t"
        finally:
            replica.stop()

    for v in (clone, vol):
        d.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
    d.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
