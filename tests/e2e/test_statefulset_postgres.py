"""Three PostgreSQL instances as one StatefulSet, backed up at one instant under load and
restored as the set's claims (issue 13).

Three instances run on three Statehold volumes of one pool (the pods ``pg-0..2`` of set
``pg``, claims ``data-pg-<n>``). A writer stamps one increasing sequence number into all
three in turn, each insert committed before the next; pgbench loads ``pg-0`` beside it.
While both run, a StatefulSetBackup takes a CHECKPOINT in every instance (a pre-hook, run
through the facade's exec; there is no kubelet here, so the "container" is a local process
with the pod's connection settings), one group snapshot of the three volumes, and backs
each one up. A StatefulSetRestore then brings the group back into a new namespace as
claims ``data-pg-0..2``, and on each restored volume:

* PostgreSQL starts (crash recovery from the WAL inside the snapshot) and ``pg_amcheck``
  finds nothing wrong;
* recovery began at the pre-hook's checkpoint or later (``pg_controldata``): no older WAL
  had to be replayed;
* the newest stamps of the three differ by at most one: one instant across the set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statehold.controller.statefulset_backups import assign_set_backup, run_set_backup
from statehold.controller.statefulset_restores import assign_set_restore, run_set_restore
from statehold.engine.node import Node
from statehold.engine.types import GiB, PoolSpec
from statehold.kube.execs import ExecCall
from statehold.kube.facade import ExecResult
from statehold.kube.kinds import PV, PVC, STATEFUL_SET_BACKUP, STATEFUL_SET_RESTORE
from statehold.kube.memory import MemoryKube
from tests.e2e.test_postgres_workload import Postgres, _as_postgres, _pg_bin, _traversable
from tests.fixtures.engine import close_node
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.controller.statefulset_cluster import hook, running_pods, statefulset

pytestmark = [pytest.mark.root]

NODE = "n1"
API = "statehold.io/v1alpha1"
PASSWORD = "pg group backups"
PODS = ("pg-0", "pg-1", "pg-2")
STAMPS_BEFORE = 30
"""Stamps the writer commits before the backup starts, so it is mid-stream."""


def lsn(text: str) -> int:
    hi, _, lo = text.strip().partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Stamper(threading.Thread):
    """Stamps 1, 2, 3, ... into every instance in turn; each insert is committed
    (synchronous_commit, fsync on) before the next instance gets the same number."""

    def __init__(self, instances: list[Postgres]) -> None:
        super().__init__(name="stamper", daemon=True)
        self.procs = [subprocess.Popen(
            ["runuser", "-u", "postgres", "--", _pg_bin("psql"), "-h", str(pg.sockdir), "-p",
             "5432", "-d", "postgres", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1) for pg in instances]
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.last = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                for proc in self.procs:
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(f"INSERT INTO stamps VALUES ({n});\n\\echo ok {n}\n")
                    proc.stdin.flush()
                    while (line := proc.stdout.readline()) and line.strip() != f"ok {n}":
                        pass
                    if not line:
                        raise RuntimeError(f"psql ended: {proc.stderr.read() if proc.stderr else ''}")
                with self.progress:
                    self.last = n
                    self.progress.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc
            with self.progress:
                self.progress.notify_all()

    def wait_for(self, n: int) -> None:
        with self.progress:
            self.progress.wait_for(lambda: self.last >= n or self.error is not None, timeout=300)
        assert self.error is None and self.last >= n, self.error

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=300)
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=60)
        assert self.error is None, self.error


class PgHost:
    """The node: one pool, three mounted XFS volumes, a PostgreSQL on each; hooks' exec runs
    the command as the postgres user against the pod's instance (PGHOST etc.)."""

    def __init__(self, home: Path, scratch: Path) -> None:
        self.node = Node(home)
        self.pool = self.node.create_pool(PoolSpec(name="fast", image_size=6 * GiB))
        self.scratch = scratch
        self.instances: dict[str, Postgres] = {}
        self.hook_runs: list[str] = []

    def start_instances(self) -> None:
        for o, pod in enumerate(PODS):
            self.pool.create_volume(f"pvc-data-{o}", 1 * GiB)
            mnt = self.scratch / "mnt" / pod
            mnt.mkdir(parents=True)
            self.pool.mount(f"pvc-data-{o}", mnt)
            self.instances[pod] = self._instance(mnt, pod, init=True)

    def _instance(self, mnt: Path, tag: str, *, init: bool) -> Postgres:
        _traversable(mnt, self.scratch)
        data = mnt / "pgdata"
        if init:
            shutil.chown(mnt, "postgres", "postgres")
            data.mkdir()
            shutil.chown(data, "postgres", "postgres")
            data.chmod(0o700)
            _as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                          "--no-sync"], env={**os.environ, "LC_ALL": "C"})
        pg = Postgres(data, self.scratch / "sock" / tag)
        _traversable(pg.sockdir, self.scratch)
        return pg

    def restored_instance(self, pool: str, volume: str, tag: str) -> tuple[Postgres, Path]:
        mnt = self.scratch / "restored" / tag
        mnt.mkdir(parents=True)
        self.node.pool(pool).mount(volume, mnt)
        return self._instance(mnt, f"r-{tag}", init=False), mnt

    def exec(self, call: ExecCall) -> ExecResult:
        pg = self.instances[call.pod]
        self.hook_runs.append(f"{call.pod} {' '.join(call.command)}")
        env = [f"PGHOST={pg.sockdir}", "PGPORT=5432", "PGDATABASE=postgres", "PGUSER=postgres",
               f"PATH={os.path.dirname(_pg_bin('psql'))}:/usr/bin:/bin"]
        try:
            done = subprocess.run(["runuser", "-u", "postgres", "--", "env", *env, *call.command],
                                  capture_output=True, text=True, timeout=call.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            return ExecResult(None, str(exc.stdout or ""), str(exc.stderr or ""))
        return ExecResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def host(engine_home: Path, scratch: Path) -> Iterator[PgHost]:
    h = PgHost(engine_home, scratch)
    restored: list[Postgres] = []
    h.restored = restored  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        for pg in [*h.instances.values(), *restored]:
            pg.stop()
        close_node(h.node)


def test_three_postgres_instances_backed_up_at_one_instant_restore_consistent(
        memory_kube: MemoryKube, host: PgHost, scratch: Path, fake_clock: Any) -> None:
    kube = memory_kube
    secret(kube, "pw", password=PASSWORD)
    path_target(kube, path=str(scratch / "repo"))
    storage_class(kube)
    statefulset(kube, "pg")
    for o in range(3):
        bound_pvc(kube, f"data-pg-{o}", node=NODE, pool="fast", volume=f"pvc-data-{o}", size="1Gi")
    running_pods(kube, "pg")
    kube.on_exec(host.exec)

    host.start_instances()
    for pg in host.instances.values():
        pg.start()
        pg.sql("CREATE TABLE stamps (seq bigint PRIMARY KEY)")
    primary = host.instances["pg-0"]
    _as_postgres([_pg_bin("pgbench"), "-h", str(primary.sockdir), "-p", "5432", "-i", "-s", "1",
                  "-q", "postgres"])
    stamper = Stamper(list(host.instances.values()))
    load = primary.pgbench("-n", "-c", "2", "-t", "2000")
    stamper.start()
    try:
        stamper.wait_for(STAMPS_BEFORE)
        kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                     "metadata": {"name": "pg-now", "namespace": NS},
                     "spec": {"statefulSetName": "pg", "target": "t", "hooks": {
                         "pre": [hook("checkpoint", "psql", "-X", "-A", "-t", "-c", "CHECKPOINT",
                                      "-c", "SELECT redo_lsn FROM pg_control_checkpoint()",
                                      timeoutSeconds=120)],
                         "post": [hook("resume", "psql", "-X", "-A", "-t", "-c", "SELECT 1")]}}})
        assert assign_set_backup(kube, kube.get(STATEFUL_SET_BACKUP, "pg-now", NS),
                                 fake_clock).outcome == "done"
        result = run_set_backup(kube, kube.get(STATEFUL_SET_BACKUP, "pg-now", NS), host.node,
                                NODE, fake_clock)
        assert result.outcome == "done", result
        stamper.wait_for(stamper.last + 5)  # the writer went on after the thaw
    finally:
        stamper.finish()
        _out, err = load.communicate(timeout=600)
    assert load.returncode == 0, err
    done = kube.get(STATEFUL_SET_BACKUP, "pg-now", NS)["status"]
    assert done["phase"] == "Completed" and done["consistency"] == "Application"
    checkpoint = {h["pod"]: lsn(h["output"].strip().splitlines()[-1])
                  for h in done["hooks"] if h["phase"] == "pre"}
    assert sorted(checkpoint) == list(PODS)
    for pg in host.instances.values():
        pg.stop()

    # restore the group into a new namespace, as the set's claims
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "pw", "namespace": "restored"},
                 "stringData": {"password": PASSWORD}})
    kube.create({"apiVersion": API, "kind": "BackupTarget",
                 "metadata": {"name": "t", "namespace": "restored"},
                 "spec": {"path": {"path": str(scratch / "repo")},
                          "passwordSecretRef": {"name": "pw"}}})
    kube.create({"apiVersion": API, "kind": "StatefulSetRestore",
                 "metadata": {"name": "pg", "namespace": "restored"},
                 "spec": {"groupBackupId": done["groupBackupId"], "target": "t", "node": NODE}})
    assert assign_set_restore(kube, kube.get(STATEFUL_SET_RESTORE, "pg", "restored"),
                              fake_clock).outcome == "done"
    result = run_set_restore(kube, kube.get(STATEFUL_SET_RESTORE, "pg", "restored"), host.node,
                             NODE, fake_clock)
    assert result.outcome == "done", result
    assert sorted(c["metadata"]["name"] for c in kube.list(PVC, "restored")) == [
        "data-pg-0", "data-pg-1", "data-pg-2"]

    newest = {}
    for o, pod in enumerate(PODS):
        claim = kube.get(PVC, f"data-pg-{o}", "restored")
        pool, _, volume = kube.get(PV, claim["spec"]["volumeName"])["spec"]["csi"][
            "volumeHandle"].partition("/")
        pg, _mnt = host.restored_instance(pool, volume, pod)
        control = _as_postgres([_pg_bin("pg_controldata"), "-D", str(pg.data)],
                               env={**os.environ, "LC_ALL": "C"}).stdout
        redo = next(line.split(":", 1)[1] for line in control.splitlines()
                    if line.startswith("Latest checkpoint's REDO location"))
        assert lsn(redo) >= checkpoint[pod], (pod, redo)  # nothing older to replay
        (pg.data / "postmaster.pid").unlink()  # the snapshot caught a running server
        host.restored.append(pg)  # type: ignore[attr-defined]
        pg.start()  # crash recovery from the checkpoint on
        _as_postgres([_pg_bin("pg_amcheck"), "-h", str(pg.sockdir), "-p", "5432", "-d", "postgres",
                      "--install-missing", "--heapallindexed"])
        newest[pod] = int(pg.sql("SELECT max(seq) FROM stamps"))
        if pod == "pg-0":
            assert pg.sql("SELECT count(*) FROM pgbench_accounts") == "100000"
            assert pg.sql("SELECT coalesce(sum(abalance), 0) = (SELECT coalesce(sum(delta), 0) "
                          "FROM pgbench_history) FROM pgbench_accounts") == "t"
    assert min(newest.values()) >= STAMPS_BEFORE
    assert max(newest.values()) - min(newest.values()) <= 1, newest  # one instant
    assert max(newest.values()) < stamper.last  # the backup is not the end of the run
