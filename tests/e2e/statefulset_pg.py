"""Helpers for ``test_statefulset_postgres.py``: three PostgreSQL instances on the volumes of
one node's pool, a writer stamping one sequence into all of them, and the StatefulSet's
objects on a real API server as its controller, a provisioner and a kubelet would leave them.

* :class:`PgHost`: the node (an engine :class:`Node`, one pool), a volume per pod mounted
  with a PostgreSQL on it (unix socket only), restored volumes mounted the same way, and
  for each pod the :class:`~tests.fixtures.localexec.Container` a hook's exec runs in.
* :class:`Stamper`: stamps 1, 2, 3, ... into every instance in turn, each insert committed
  before the next instance gets the same number.
* :class:`SetScene`: on the real API server, a StatefulSet whose claims the real
  StatefulSet controller makes, PVs for them as external-provisioner would name them (bound
  by the real PV controller), and the set's pods reported ``Running`` as a kubelet would
  (no kubelet or scheduler ever touches them: their ``schedulerName`` is served by none).

Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from statehold.controller.locate import DRIVER, TOPOLOGY_KEY
from statehold.controller.problems import Result
from statehold.engine.node import Node
from statehold.engine.types import GiB, PoolSpec
from statehold.errors import NotFound
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import POD, PV, PVC
from tests.e2e.test_postgres_workload import Postgres, _as_postgres, _pg_bin, _traversable
from tests.fixtures.localexec import Container

T = TypeVar("T")
WAIT = 180.0
"""Deadline of one wait on the API server's controllers (2 cores shared with a full suite)."""


def until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll check() until it returns something truthy; AssertionError naming ``what`` after
    the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(0.2)


def now() -> datetime:
    return datetime.now(UTC)


def drive(handler: Callable[[], Result], what: str, timeout: float = 600.0) -> Result:
    """Call a reconciler as its kopf handler would, again while it asks to be retried (a
    conflict on the real server, a repository busy), until it is done, skipped or failed."""
    last: list[Result] = []

    def settled() -> Result | None:
        got = handler()
        last[:] = [got]
        return None if got.outcome == "retry" else got

    try:
        return until(settled, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last result {last}") from None


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
    """The node: one pool, one mounted XFS volume per pod, a PostgreSQL on each."""

    def __init__(self, home: Path, scratch: Path, pool: str) -> None:
        self.node = Node(home)
        self.pool = self.node.create_pool(PoolSpec(name=pool, image_size=6 * GiB))
        self.scratch = scratch
        self.instances: dict[str, Postgres] = {}
        self.restored: list[Postgres] = []

    def start_instances(self, pods: tuple[str, ...]) -> None:
        for pod in pods:
            self.pool.create_volume(volume_of(pod), 1 * GiB)
            mnt = self.scratch / "mnt" / pod
            mnt.mkdir(parents=True)
            self.pool.mount(volume_of(pod), mnt)
            self.instances[pod] = self._instance(mnt, pod, init=True)
            self.instances[pod].start()

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

    def container(self, pod: str) -> Container:
        """What the pod's postgres container gives a hook: the postgres user, the client's
        environment pointing at the pod's instance, PostgreSQL's tools on PATH."""
        pg = self.instances[pod]
        return Container("postgres", {
            "PGHOST": str(pg.sockdir), "PGPORT": "5432", "PGDATABASE": "postgres",
            "PGUSER": "postgres", "LC_ALL": "C",
            "PATH": f"{os.path.dirname(_pg_bin('psql'))}:/usr/bin:/bin"}, cwd=Path("/"))

    def restored_instance(self, pool: str, volume: str, tag: str) -> Postgres:
        mnt = self.scratch / "restored" / tag
        mnt.mkdir(parents=True)
        self.node.pool(pool).mount(volume, mnt)
        pg = self._instance(mnt, f"r-{tag}", init=False)
        self.restored.append(pg)
        return pg

    def stop_all(self) -> None:
        for pg in [*self.instances.values(), *self.restored]:
            pg.stop()


def volume_of(pod: str) -> str:
    return f"pvc-data-{pod}"


# -- the set's objects on the API server --------------------------------------------------------

def statefulset(name: str, namespace: str, *, replicas: int, storage_class: str,
                scheduler: str) -> Obj:
    """A set of PostgreSQL pods with one claim template ``data``; pods made in parallel and
    left to a scheduler nobody runs (no kubelet here to start them)."""
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "schedulerName": scheduler, "automountServiceAccountToken": False,
                "containers": [{"name": "postgres", "image": "postgres:15",
                                "volumeMounts": [{"name": "data",
                                                  "mountPath": "/var/lib/postgresql/data"}]}]}},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": {"tier": "db"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                         "resources": {"requests": {"storage": "1Gi"}}}}]}}


def storage_class(name: str) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": DRIVER, "parameters": {"csi.storage.k8s.io/fstype": "xfs"},
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True,
            "reclaimPolicy": "Delete"}


def provisioned_pv(claim: Obj, handle: str, node: str) -> Obj:
    """The PV external-provisioner makes for ``claim`` (named ``pvc-<claim uid>``, bound
    ahead to it) for a local volume of ``node`` with this handle."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}",
                     "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"], "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec["storageClassName"], "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "xfs",
                    "volumeAttributes": {"statehold.io/type": "local"}},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}}}}


def running(pod: Obj) -> Obj:
    """The status a kubelet reports for a pod whose one container runs."""
    started = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    c = pod["spec"]["containers"][0]
    return {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0,
                                   "image": c["image"], "imageID": f"docker-pullable://{c['image']}",
                                   "started": True, "state": {"running": {"startedAt": started}}}]}


def bound(kube: Kube, kind: Any, name: str, namespace: str | None = None) -> bool:
    try:
        return (kube.get(kind, name, namespace).get("status") or {}).get("phase") == "Bound"
    except NotFound:
        return False


def exists(kube: Kube, kind: Any, name: str, namespace: str | None = None) -> Obj | None:
    try:
        return kube.get(kind, name, namespace)
    except NotFound:
        return None


def provision_claims(kube: Kube, namespace: str, claims: list[str], node: str,
                     handle: Callable[[str], str]) -> list[str]:
    """Wait for the set's controller to make each claim, give each a PV as the provisioner
    does, wait until the PV controller bound both; the PVs' names."""
    pvs = []
    for name in claims:
        claim = until(lambda n=name: exists(kube, PVC, n, namespace),  # type: ignore[misc]
                      f"the StatefulSet controller making claim {name}")
        pv = kube.create(provisioned_pv(claim, handle(name), node))
        pvs.append(pv["metadata"]["name"])
    for name, pv_name in zip(claims, pvs, strict=True):
        until(lambda n=name, p=pv_name: bound(kube, PVC, n, namespace) and bound(kube, PV, p),  # type: ignore[misc]
              f"the PV controller binding claim {name}")
    return pvs


def pods_running(kube: Kube, namespace: str, pods: tuple[str, ...]) -> None:
    """Wait for the set's controller to make each pod, then report it Running."""
    for name in pods:
        pod = until(lambda n=name: exists(kube, POD, n, namespace),  # type: ignore[misc]
                    f"the StatefulSet controller making pod {name}")
        kube.patch_status(POD, name, running(pod), namespace)
