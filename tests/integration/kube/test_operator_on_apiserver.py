"""The operator against a real API server (``kube_control_plane``: kube-apiserver,
kube-controller-manager and kube-scheduler v1.20.2, or the cluster STATEHOLD_TEST_KUBECONFIG
names), installed as the chart installs it and run as the Deployment and DaemonSet run it.

* The chart's CRDs, and its ServiceAccounts, ClusterRoles, Roles, bindings and StorageClass
  exactly as rendered (helm-python-sdk), in a fresh namespace.
* ``statehold operator run`` as processes with the arguments and environment the chart
  gives its containers, each authenticating as its pod's ServiceAccount with the token the
  API server issued it (never as admin): the operator Deployment's container twice (op-1
  leads, op-2 waits on the Lease), and the DaemonSet's agent container for each of two
  fake nodes, n1 and n2, each with its own Statehold home on this host.
* Driven only by writing objects, as a user would: a directory BackupTarget (both agents
  run here, so one directory is "the same path on every node") -> Ready; a StoragePool per
  node -> Ready with capacity; a PV/PVC pair for a volume in n1's pool (as the CSI driver
  would have provisioned it, bound by the real PV controller) -> three VolumeBackups, each
  Completed (the flow that failed 3 of 3 on a real server before commit f0fdc8a); a
  ``*/1 * * * *`` BackupSchedule -> a VolumeBackup on its slot, Completed; a VolumeRestore
  onto n2 -> a new volume, PV and bound PVC whose bytes equal the backed-up ones.
* Each step leaves Events with the expected reasons. The operator's processes reach the
  API server through a recording proxy (tests/integration/kube/apiproxy.py): every answer
  they got is checked: not one 401 or 403 (the chart's RBAC is complete for what they
  did), nor 400, 422 or 5xx (the real server accepted every write). No condition or Event
  mentions Forbidden; every process is alive until SIGTERM, then exits 0 and the leader
  releases its Lease.

The schedule's minute slot is waited for as a condition (the VolumeBackup appearing), and
it is created first so that the wait overlaps the other steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from statehold.controller.backup_runner import open_repository
from statehold.controller.targets import TargetConfig
from statehold.engine.node import Node
from statehold.engine.types import FsType, MiB
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.client import ApiKube
from statehold.kube.kinds import (
    API_VERSION,
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    EVENT,
    LEASE,
    PV,
    PVC,
    SECRET,
    STORAGE_POOL,
    VOLUME_BACKUP,
    VOLUME_RESTORE,
    Kind,
)
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.engine import release_home
from tests.integration.kube.apiproxy import RecordingProxy
from tests.integration.kube.installing import (
    Admin,
    Installation,
    service_account_token,
    token_kubeconfig,
)
from tests.unit.kube.validation import render

pytestmark = pytest.mark.root

NODES = ("n1", "n2")
ACCOUNTS = ("statehold-operator", "statehold-node")
HOST_HOME = "/var/lib/statehold"  # the node's Statehold home in the chart's pods
CHART_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
               "RoleBinding", "StorageClass")
LEASE_NAME = "statehold-operator"
DRIVER, TOPOLOGY_KEY = "csi.statehold.io", "topology.statehold.io/node"
VOLUME, VOLUME_SIZE = "pvc-data", 320 * MiB  # XFS volumes are at least 300 MiB
SCHEDULE = "every-minute"
PASSWORD = "operator e2e password"
TIMEOUT = 120.0       # seconds for one flow to reach its end state on 2 busy cores
SLOT_TIMEOUT = 180.0  # a minute slot, then the operator's 30 s schedule tick, then the backup
STOP_TIMEOUT = 30.0


@dataclass
class Process:
    """One ``statehold`` process, tracked by its pid; output in a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    terminated: bool = False

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("KUBECONFIG", "POD_NAMESPACE") and not k.startswith("STATEHOLD_")}
        env.update(self.env, PYTHONUNBUFFERED="1")
        # a pod's index cache lives and dies with its container; here, with the test's
        # directory (not in root's ~/.cache, where the chart's default would put it)
        env.setdefault("STATEHOLD_BACKUP_CACHE", str(self.log.with_name(f"{self.name}-backup-cache")))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "statehold.cli.main", *self.argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM to this pid, once, as the kubelet sends it (a second one during the
        shutdown would find the default disposition kopf leaves behind, and kill it)."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM to this pid, SIGKILL if it has not exited in time: the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no output: {exc})"


@dataclass
class Deployment:
    """The installed chart, the running processes and what the test made for them."""

    ns: str
    root: Path
    kube: ApiKube                      # admin: what a user does with kubectl
    proxy: RecordingProxy
    direct: dict[str, Path]            # account -> kubeconfig straight to the API server
    processes: dict[str, Process]
    homes: dict[str, Path]
    sha_at: dict[str, str] = field(default_factory=dict)   # VolumeBackup -> volume sha256
    dashboards: dict[str, str] = field(default_factory=dict)  # operator process -> its dashboard URL

    def pool_name(self, node: str) -> str:
        return f"{node}-pool"

    def wait(self, what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        """Poll check() until it returns something true; fail at once if a process died."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(f"while waiting for {what}")
            with contextlib.suppress(NotFound, KeyError, TypeError):
                if got := check():
                    return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     + self.logs())
            time.sleep(0.2)

    def check_alive(self, when: str = "") -> None:
        dead = [p for p in self.processes.values() if not p.alive()]
        assert not dead, (f"{', '.join(p.name for p in dead)} exited {when}\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (last lines)\n{p.tail()}" for p in self.processes.values())

    def events(self, obj: dict[str, Any]) -> dict[str, str]:
        """reason -> type of every Event recorded about obj."""
        ns = obj["metadata"].get("namespace") or "default"
        return {e["reason"]: e["type"] for e in self.kube.list(EVENT, ns)
                if e["involvedObject"].get("uid") == obj["metadata"]["uid"]}

    def check_healthy(self) -> None:
        """Every process alive, not one request refused or invalid, nothing reporting
        Forbidden."""
        self.check_alive()
        assert self.proxy.refused() == [], self.proxy.refused()
        assert self.proxy.errors() == [], self.proxy.errors()
        for who in ACCOUNTS:
            assert self.proxy.seen(who) > 0, f"no request as {who} went through the proxy"
        assert self.proxy.seen("unknown") == 0
        for events_ns in (self.ns, "default"):
            forbidden = [e["message"] for e in self.kube.list(EVENT, events_ns)
                         if "forbidden" in e.get("message", "").lower()]
            assert forbidden == []
        kinds: list[tuple[Kind, str | None]] = [
            (BACKUP_TARGET, self.ns), (VOLUME_BACKUP, self.ns), (BACKUP_SCHEDULE, self.ns),
            (VOLUME_RESTORE, self.ns), (STORAGE_POOL, None)]
        for kind, where in kinds:
            for obj in self.kube.list(kind, where):
                for c in (obj.get("status") or {}).get("conditions") or []:
                    text = f"{c.get('reason')} {c.get('message')}".lower()
                    assert "forbidden" not in text and "permissiondenied" not in text, \
                        (obj["metadata"]["name"], c)


def statehold_object(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "statehold.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def volume_sha256(home: Path, pool: str, volume: str) -> str:
    """sha256 of a volume's whole content (its backing file), read by a short-lived Node."""
    node = Node(home)
    try:
        path = node.pool(pool).get_volume(volume).path
    finally:
        node.close()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_data(d: Deployment, generation: int) -> str:
    """What a workload does: mount the volume, write a file, unmount; the volume's sha256."""
    home, pool_name = d.homes["n1"], d.pool_name("n1")
    node = Node(home)
    target = d.root / "mnt"
    target.mkdir(exist_ok=True)
    try:
        pool = node.pool(pool_name)
        pool.mount(VOLUME, target)
        try:
            data = hashlib.sha256(f"generation {generation}".encode()).digest() * (64 << 10)
            (target / f"gen-{generation}.bin").write_bytes(data)  # 2 MiB, new each time
            (target / "latest").write_text(f"{generation}\n")
        finally:  # unmounting writes everything back to the volume
            pool.unmount(VOLUME, target)
            pool.detach(VOLUME)
    finally:
        node.close()
    return volume_sha256(home, pool_name, VOLUME)


# -- the deployment ------------------------------------------------------------------------------

def install(inst: Installation, ns: str) -> list[dict[str, Any]]:
    """The chart's CRDs, then its namespace, accounts, RBAC and StorageClass as rendered;
    every object the chart renders (for the workloads' arguments)."""
    for path in sorted((render.CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                # as shipped: a 1.20 server accepts x-kubernetes-validations and ignores
                # them (CEL rules are enforced from 1.25), so nothing needs stripping
                inst.crd(crd)
    docs: list[dict[str, Any]] = render.render_chart(name="statehold", namespace=ns)
    for kind in CHART_KINDS:
        for doc in docs:
            if doc["kind"] == kind:
                inst.apply(doc)
    return docs


@dataclass(frozen=True)
class Container:
    """A rendered container that runs ``statehold``, and the account its pod runs as."""

    args: list[str]
    env: dict[str, str]
    account: str


def container(docs: list[dict[str, Any]], kind: str, name: str, container: str) -> Container:
    (workload,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    pod = workload["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == container]
    env = {e["name"]: e.get("value", "") for e in c.get("env") or []}
    return Container(list(c["args"]), env, pod["serviceAccountName"])


def own_dashboard_port(d: Deployment, name: str, c: Container) -> Container:
    """The chart's operator serves its dashboard on 127.0.0.1 of its own pod; here the two
    operator "pods" share the host's loopback, so each gets a free port of its own."""
    flag = "--dashboard-address="
    (i,) = [i for i, a in enumerate(c.args) if a.startswith(flag)]
    assert c.args[i].startswith(f"{flag}127.0.0.1:"), c.args[i]  # loopback, as rendered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d.dashboards[name] = f"http://127.0.0.1:{port}"
    return Container([*c.args[:i], f"{flag}127.0.0.1:{port}", *c.args[i + 1:]], c.env, c.account)


def start(d: Deployment, name: str, c: Container, kubeconfigs: dict[str, Path],
          pod: dict[str, str], home: Path | None = None) -> Process:
    """Run a container's command as its pod would: $(VAR)s from the pod's downward-API
    values, the node's /var/lib/statehold at ``home``, and the pod's ServiceAccount token
    in a kubeconfig instead of the in-cluster one."""
    def expand(text: str) -> str:
        for var, value in pod.items():
            text = text.replace(f"$({var})", value)
        return text.replace(HOST_HOME, str(home)) if home is not None else text

    env = {k: expand(v) for k, v in c.env.items()} | pod
    argv = [expand(a) for a in c.args] + ["--kubeconfig", str(kubeconfigs[c.account])]
    p = Process(name, argv, env, d.root / f"{name}.log")
    d.processes[name] = p
    p.start()
    return p


@pytest.fixture(scope="module")
def deployment(kube_control_plane: ControlPlane) -> Iterator[Deployment]:
    root = Path(tempfile.mkdtemp(prefix="statehold-operator-e2e-", dir="/var/tmp"))
    ns = f"statehold-e2e-{uuid.uuid4().hex[:8]}"
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    kube = ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))
    homes = {n: root / f"home-{n}" for n in NODES}
    proxy: RecordingProxy | None = None
    d: Deployment | None = None
    try:
        docs = install(inst, ns)
        tokens = {a: service_account_token(admin, ns, a) for a in ACCOUNTS}
        ca = root / "cluster-ca.crt"
        ca.write_bytes(next(iter(tokens.values()))[1])
        proxy = RecordingProxy(admin.server, ca, {tok: a for a, (tok, _) in tokens.items()}, root)
        url = proxy.start()
        via_proxy = {a: token_kubeconfig(root / f"{a}.kubeconfig", url, proxy.ca.read_bytes(),
                                         tok, a) for a, (tok, _) in tokens.items()}
        direct = {a: token_kubeconfig(root / f"{a}-direct.kubeconfig", admin.server, pem, tok, a)
                  for a, (tok, pem) in tokens.items()}
        d = Deployment(ns=ns, root=root, kube=kube, proxy=proxy, direct=direct, processes={},
                       homes=homes)

        # what a user writes before anything runs: the schedule first (its minute slot is
        # waited for last), the password, the target, a pool per node
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pw", "namespace": ns},
                     "stringData": {"password": PASSWORD}})
        kube.create(statehold_object("BackupTarget", "t", ns, {
            "path": {"path": str(root / "repo")}, "passwordSecretRef": {"name": "pw"}}))
        kube.create(statehold_object("BackupSchedule", SCHEDULE, ns, {
            "schedule": "*/1 * * * *", "target": "t",
            "selector": {"matchLabels": {"backup": "e2e"}}}))
        for n in NODES:
            homes[n].mkdir()
            kube.create(statehold_object("StoragePool", d.pool_name(n), None, {
                "node": n, "directory": str(homes[n] / "images"), "imageSize": "1Gi"}))

        # the operator Deployment's pods (two replicas) and the agent container of the
        # node DaemonSet's pod on each fake node, with the arguments the chart gives them
        operator = container(docs, "Deployment", "statehold-operator", "operator")
        agent = container(docs, "DaemonSet", "statehold-node", "statehold-agent")
        leader = start(d, "op-1", own_dashboard_port(d, "op-1", operator), via_proxy,
                       {"NAMESPACE": ns, "POD_NAME": "op-1"})
        d.wait("op-1 to hold the lease", lambda: kube.get(LEASE, LEASE_NAME, ns)["spec"][
            "holderIdentity"] == "op-1")
        assert leader.alive()
        start(d, "op-2", own_dashboard_port(d, "op-2", operator), via_proxy,
              {"NAMESPACE": ns, "POD_NAME": "op-2"})
        for n in NODES:
            start(d, f"agent-{n}", agent, via_proxy,
                  {"NAMESPACE": ns, "POD_NAME": f"statehold-node-{n}", "NODE_NAME": n}, homes[n])
        d.wait("the leader and the agents to reach the API server", lambda: all(
            d.proxy.seen(a) > 0 for a in ACCOUNTS))
        yield d
    finally:
        try:
            if d is not None:
                if "op-2" in d.processes:  # the follower first, then the rest at once
                    d.processes["op-2"].stop()
                for p in d.processes.values():
                    p.terminate()
                for p in d.processes.values():
                    p.stop()
        finally:
            if proxy is not None:
                proxy.stop()
        with contextlib.suppress(Exception):
            for pv in kube.list(PV):
                if (pv["spec"].get("claimRef") or {}).get("namespace") == ns:
                    kube.delete(PV, pv["metadata"]["name"])
            for n in NODES:
                pool = kube.get(STORAGE_POOL, f"{n}-pool")
                for ev in kube.list(EVENT, "default"):
                    if ev["involvedObject"].get("uid") == pool["metadata"]["uid"]:
                        kube.delete(EVENT, ev["metadata"]["name"], "default")
                kube.delete(STORAGE_POOL, f"{n}-pool")
        try:
            inst.remove()  # the namespace (and everything in it), the CRDs, the RBAC
        finally:
            kube.close()
            admin.close()
            for home in homes.values():
                release_home(home)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pools(deployment: Deployment) -> dict[str, dict[str, Any]]:
    d = deployment
    return {n: d.wait(f"StoragePool of {n} Ready", lambda n=n: (
        p := d.kube.get(STORAGE_POOL, d.pool_name(n)))["status"]["phase"] == "Ready" and p)
        for n in NODES}


@pytest.fixture(scope="module")
def claim(deployment: Deployment, pools: dict[str, Any]) -> dict[str, Any]:
    """What the CSI driver would have provisioned on n1 for PVC ``data``: a volume in n1's
    pool and its PV (volumeHandle <pool>/<volume>, node affinity on our topology key), the
    claim bound to it by the real PV controller."""
    d = deployment
    node = Node(d.homes["n1"])
    try:
        node.pool(d.pool_name("n1")).create_volume(VOLUME, VOLUME_SIZE, fs=FsType.XFS)
    finally:
        node.close()
    pv_name = f"{d.ns}-data"
    d.kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {
        "name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
        "spec": {"capacity": {"storage": str(VOLUME_SIZE)}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "statehold-local",
                 "volumeMode": "Filesystem",
                 "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "namespace": d.ns, "name": "data"},
                 "csi": {"driver": DRIVER, "fsType": "xfs",
                         "volumeHandle": f"{d.pool_name('n1')}/{VOLUME}",
                         "volumeAttributes": {"statehold.io/type": "local"}},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": TOPOLOGY_KEY, "operator": "In", "values": ["n1"]}]}]}}}})
    d.kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data", "namespace": d.ns, "labels": {"backup": "e2e"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "statehold-local",
                            "volumeName": pv_name,
                            "resources": {"requests": {"storage": str(VOLUME_SIZE)}}}})
    return dict(d.wait("PVC data Bound by the PV controller", lambda: (
        c := d.kube.get(PVC, "data", d.ns))["status"]["phase"] == "Bound" and c))


@pytest.fixture(scope="module")
def backups(deployment: Deployment, claim: dict[str, Any]) -> list[dict[str, Any]]:
    """Three VolumeBackups of PVC data, one after the other, new data before each."""
    d = deployment
    done = []
    for i in range(1, 4):
        name = f"data-{i}"
        d.sha_at[name] = write_data(d, i)
        d.kube.create(statehold_object("VolumeBackup", name, d.ns, {
            "persistentVolumeClaimName": "data", "target": "t"}))
        done.append(d.wait(f"VolumeBackup {name} Completed or Failed", lambda name=name: (
            b := d.kube.get(VOLUME_BACKUP, name, d.ns))["status"]["phase"] in ("Completed", "Failed")
            and b))
    return done


# -- tests ---------------------------------------------------------------------------------------

def test_operator_leads_and_every_process_runs_as_its_service_account(
        deployment: Deployment) -> None:
    d = deployment
    lease = d.kube.get(LEASE, LEASE_NAME, d.ns)
    assert lease["spec"]["holderIdentity"] == "op-1"
    assert int(lease["spec"].get("leaseTransitions") or 0) == 0  # op-2 never took it
    # the node agents' CA (replicated volumes), in the release namespace the chart passes
    assert d.kube.get(SECRET, "statehold-agent-ca", d.ns)["data"]["ca.crt"]
    # kopf logged in as each account too (login_like: the facade never watches)
    wanted = {f"/apis/{API_VERSION}/{plural}" for plural in ("volumebackups", "volumerestores")}
    for account in ACCOUNTS:
        d.wait(f"kopf's watches as {account} on {sorted(wanted)}",
               lambda account=account: wanted <= d.proxy.watches(account))
    # the accounts are not admins: what the chart does not grant, the server refuses
    as_operator = ApiKube.from_kubeconfig(str(d.direct["statehold-operator"]))
    as_node = ApiKube.from_kubeconfig(str(d.direct["statehold-node"]))
    try:
        assert as_operator.get(LEASE, LEASE_NAME, d.ns)["spec"]["holderIdentity"] == "op-1"
        as_operator.list(VOLUME_BACKUP, d.ns)
        with pytest.raises(PermissionDenied):
            as_operator.list(SECRET, "default")  # get only, outside its namespace
        with pytest.raises(PermissionDenied):
            as_node.get(LEASE, LEASE_NAME, d.ns)  # the agents take no part in the election
        as_node.list(STORAGE_POOL)
    finally:
        as_operator.close()
        as_node.close()
    d.check_healthy()


def test_directory_backup_target_becomes_ready(deployment: Deployment) -> None:
    d = deployment
    target = d.wait("BackupTarget Ready", lambda: (
        t := d.kube.get(BACKUP_TARGET, "t", d.ns))["status"]["phase"] == "Ready" and t)
    ready = {c["type"]: c for c in target["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "Checked"
    assert d.wait("the target's Ready Event", lambda: d.events(target)) == {"Ready": "Normal"}
    d.check_healthy()


def test_each_node_agent_creates_its_pool_and_reports_capacity(
        deployment: Deployment, pools: dict[str, dict[str, Any]]) -> None:
    d = deployment
    for n, pool in pools.items():
        st = pool["status"]
        assert st["capacity"] > 0 and st["allocatable"] > 0 and st["free"] > 0, st
        assert st["mountpoint"] == str(d.homes[n] / "pools" / d.pool_name(n))
        assert Path(st["mountpoint"]).is_mount()
        assert not pool["metadata"].get("finalizers")  # deleting the object never waits
        assert d.wait(f"the Created Event of {n}'s pool", lambda pool=pool: d.events(pool)) == {
            "Created": "Normal"}
    d.check_healthy()


def test_volume_backups_of_a_bound_claim_complete_every_time(
        deployment: Deployment, backups: list[dict[str, Any]]) -> None:
    d = deployment
    assert [b["status"]["phase"] for b in backups] == ["Completed"] * 3, [
        (b["metadata"]["name"], b["status"].get("conditions")) for b in backups]
    for b in backups:
        st = b["status"]
        assert st["node"] == "n1" and st["volumeHandle"] == f"n1-pool/{VOLUME}"
        assert st["progress"] == 100 and st["backupId"]
        assert b["metadata"]["labels"]["statehold.io/node"] == "n1"
        reasons = d.wait(f"Events of {b['metadata']['name']}", lambda b=b: (
            r := d.events(b)) and "Completed" in r and r)
        assert reasons == {"Scheduled": "Normal", "Started": "Normal", "Completed": "Normal"}
    # three backups, the later ones incremental (the schedule's may come in between)
    assert len({b["status"]["backupId"] for b in backups}) == 3
    assert all(b["status"].get("parentBackupId") for b in backups[1:])
    d.check_healthy()


def test_volume_restore_onto_the_other_node_has_the_backed_up_bytes(
        deployment: Deployment, backups: list[dict[str, Any]]) -> None:
    d = deployment
    source = backups[-1]["metadata"]["name"]
    d.kube.create(statehold_object("VolumeRestore", "restored", d.ns, {
        "backup": source, "persistentVolumeClaimName": "data-restored", "node": "n2"}))
    restore = d.wait("VolumeRestore Completed or Failed", lambda: (
        r := d.kube.get(VOLUME_RESTORE, "restored", d.ns))["status"]["phase"] in (
        "Completed", "Failed") and r)
    st = restore["status"]
    assert st["phase"] == "Completed", st.get("conditions")
    pool, _, volume = st["volumeHandle"].partition("/")
    assert pool == d.pool_name("n2")
    pvc = d.wait("PVC data-restored Bound by the PV controller", lambda: (
        c := d.kube.get(PVC, "data-restored", d.ns))["status"]["phase"] == "Bound" and c)
    assert pvc["spec"]["volumeName"] == st["persistentVolumeName"]
    pv = d.kube.get(PV, st["persistentVolumeName"])
    assert pv["spec"]["csi"]["volumeHandle"] == st["volumeHandle"]
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0][
        "values"] == ["n2"]
    assert volume_sha256(d.homes["n2"], pool, volume) == d.sha_at[source]
    reasons = d.wait("the restore's Events", lambda: (r := d.events(restore)) and
                     "Completed" in r and r)
    assert reasons == {"Scheduled": "Normal", "Restored": "Normal", "Completed": "Normal"}
    d.check_healthy()


def test_backup_schedule_makes_a_backup_on_its_slot(deployment: Deployment,
                                                    claim: dict[str, Any]) -> None:
    d = deployment
    mine = {"statehold.io/schedule": SCHEDULE}
    made = d.wait("the schedule's first VolumeBackup Completed or Failed", lambda: [
        b for b in d.kube.list(VOLUME_BACKUP, d.ns, label_selector=mine)
        if (b.get("status") or {}).get("phase") in ("Completed", "Failed")], timeout=SLOT_TIMEOUT)
    d.kube.patch(BACKUP_SCHEDULE, SCHEDULE, {"spec": {"suspend": True}}, d.ns)  # one is enough
    b = made[0]
    assert b["status"]["phase"] == "Completed", b["status"].get("conditions")
    assert b["spec"] == {"persistentVolumeClaimName": "data", "target": "t"}
    assert b["metadata"]["name"].startswith(f"{SCHEDULE}-data-")
    schedule = d.kube.get(BACKUP_SCHEDULE, SCHEDULE, d.ns)
    assert schedule["status"]["lastScheduleTime"] and schedule["status"]["nextScheduleTime"]
    assert d.wait("the schedule's Event", lambda: d.events(schedule).get("BackupsCreated")) == "Normal"
    assert d.wait("the backup's Events", lambda: (r := d.events(b)) and "Completed" in r and r
                  ) == {"Scheduled": "Normal", "Started": "Normal", "Completed": "Normal"}
    d.check_healthy()


def test_a_forgotten_volume_backup_leaves_the_repository_and_the_cluster(
        deployment: Deployment, backups: list[dict[str, Any]]) -> None:
    d = deployment
    first, kept = backups[0], backups[1:]
    name = first["metadata"]["name"]
    d.kube.patch(VOLUME_BACKUP, name, {"metadata": {"annotations": {
        "statehold.io/forget": "true"}}}, d.ns)

    def gone() -> bool:
        try:
            d.kube.get(VOLUME_BACKUP, name, d.ns)
        except NotFound:
            return True
        return False

    d.wait(f"VolumeBackup {name} deleted by n1's agent", gone)
    assert d.wait("the Forgotten Event", lambda: d.events(first).get("Forgotten")) == "Normal"
    target = TargetConfig(name="t", namespace=d.ns, kind="path", password=PASSWORD,
                          path=str(d.root / "repo"))
    ids = open_repository(target).backup_ids()
    assert first["status"]["backupId"] not in ids
    assert {b["status"]["backupId"] for b in kept} <= set(ids)
    d.check_healthy()


def test_both_operators_serve_the_dashboard_read_only_under_the_charts_rbac(
        deployment: Deployment, pools: dict[str, dict[str, Any]], claim: dict[str, Any]) -> None:
    """The chart turns the dashboard on: every operator replica (the follower too) serves
    it with the operator's own, chart-granted identity; an anonymous visitor sees the pools
    with their capacities and the claim, and no action."""
    d = deployment
    assert set(d.dashboards) == {"op-1", "op-2"}
    for name, base in d.dashboards.items():
        page = {}
        for path in ("/pools", "/volumes", "/backups", "/schedules", "/restores"):
            with urllib.request.urlopen(base + path, timeout=30) as resp:
                assert resp.status == 200, (name, path)
                page[path] = resp.read().decode()
        for pool in pools.values():
            fresh = d.kube.get(STORAGE_POOL, pool["metadata"]["name"])
            assert pool["metadata"]["name"] in page["/pools"]
            assert f'data-capacity="{fresh["status"]["capacity"]}"' in page["/pools"], name
        assert claim["metadata"]["name"] in page["/volumes"]
        assert 'class="action' not in page["/volumes"] + page["/backups"]  # read-only
    d.check_healthy()


def test_every_process_stops_cleanly_on_sigterm_and_the_lease_is_released(
        deployment: Deployment) -> None:
    d = deployment
    d.check_healthy()
    # the follower first: it would take the lease the leader gives up; then the rest at once
    codes = {"op-2": d.processes["op-2"].stop()}
    rest = ("op-1", "agent-n1", "agent-n2")
    for name in rest:
        d.processes[name].terminate()
    codes |= {name: d.processes[name].stop() for name in rest}
    assert codes == {"op-2": 0, "op-1": 0, "agent-n1": 0, "agent-n2": 0}, d.logs()
    assert d.kube.get(LEASE, LEASE_NAME, d.ns)["spec"]["holderIdentity"] == ""
    assert d.proxy.refused() == []
