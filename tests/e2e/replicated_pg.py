"""Helpers for ``test_replicated_postgres.py``: a replicated volume on nodes that are network
namespaces (``tests.fixtures.netns``, agents from ``tests.integration.agent.harness``), the
operator's reconciler and the CSI drivers against a real kube-apiserver, and PostgreSQL on
the volume.

* :class:`Heartbeat`: the Nodes (with their InternalIP, so the operator and the certificates
  find the agents) and their Leases, renewed as a kubelet does, so the real node lifecycle
  controller keeps them Ready; a node whose power is cut stops beating.
* :class:`World`: the reconcile pass as the operator's ticker runs it, the record, the
  copies' reports and on-disk state, CreateVolume/NodeStage/NodePublish through each node's
  CSI driver on its socket.
* :class:`Ledger`: one client committing 1, 2, 3, ... into a table, noting after each commit
  returned the primary's point sequence number (from its state file): the commits that
  precede a point are known from outside, without timestamps.
* :func:`power_off`: PostgreSQL killed as by a power loss (every process of the instance
  SIGKILLed by pid, no shutdown, no checkpoint).

Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from statehold.agent.fleet import AgentFleet
from statehold.controller.replicas import CopyReport
from statehold.controller.replication import replication_pass
from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node
from statehold.errors import NotFound, StateholdError
from statehold.kube.facade import Kube
from statehold.kube.kinds import EVENT, LEASE, NODE, PV, REPLICATED_VOLUME
from statehold.kube.nodes import OUT_OF_SERVICE
from statehold.replication.points import node_label, parse_point
from statehold.replication.state import CopyState, StateStore
from tests.e2e.test_postgres_workload import Postgres, _pg_bin
from tests.fixtures.engine import release_home
from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import Agents
from tests.integration.csi.harness import mount_cap

MiB = 1024 * 1024
LEASE_NAMESPACE = "kube-node-lease"
BEAT = 5.0
"""Seconds between heartbeats (the node lifecycle controller allows 40 s without one)."""
C = grpc.StatusCode


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the Nodes ---------------------------------------------------------------------------------

class Heartbeat:
    """Node objects for the cluster's nodes, kept Ready by renewing their Leases."""

    def __init__(self, kube: Kube, nodes: Sequence[NetNode]) -> None:
        self.kube = kube
        self.nodes = list(nodes)
        self.beating = {n.name for n in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)
        self.created: list[str] = []

    def start(self) -> None:
        now = _now()
        for n in self.nodes:
            ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "a network namespace (statehold replicated PostgreSQL test)",
                     "lastHeartbeatTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
            node = self.kube.create({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name,
                                                        "topology.statehold.io/node": n.name}},
                "spec": {},
                # no kubelet posts a status: it is given on create
                "status": {"conditions": [ready],
                           "addresses": [{"type": "InternalIP", "address": n.ip},
                                         {"type": "Hostname", "address": n.name}]}})
            self.created.append(n.name)
            self.kube.create({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": n.name, "namespace": LEASE_NAMESPACE, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": n.name,
                     "uid": node["metadata"]["uid"]}]},
                "spec": {"holderIdentity": n.name, "leaseDurationSeconds": 40,
                         "acquireTime": _micro(now), "renewTime": _micro(now)}})
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT):
            for name in sorted(self.beating):
                with contextlib.suppress(StateholdError):  # an API hiccup: the next beat retries
                    self.kube.patch(LEASE, name, {"spec": {"renewTime": _micro(_now())}},
                                    LEASE_NAMESPACE)

    def power_off(self, name: str) -> None:
        """The node stops beating: the real node lifecycle controller marks it Ready=Unknown
        (and taints it unreachable) once its Lease is 40 s old."""
        self.beating.discard(name)

    def ready(self, name: str) -> bool:
        conditions = (self.kube.get(NODE, name).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def out_of_service(self, name: str) -> None:
        """What the administrator runs once the node is known to be off:
        ``kubectl taint nodes <n> node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``."""
        taints = [t for t in self.kube.get(NODE, name)["spec"].get("taints") or []
                  if t.get("key") != OUT_OF_SERVICE]
        taints.append({"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"})
        self.kube.patch(NODE, name, {"spec": {"taints": taints}})

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for name in self.created:
            with contextlib.suppress(NotFound):
                self.kube.delete(LEASE, name, LEASE_NAMESPACE)
            with contextlib.suppress(NotFound):
                self.kube.delete(NODE, name)


# -- one node's CSI driver ------------------------------------------------------------------------

@dataclass
class Csi:
    engine: Node
    server: CsiServer
    channel: grpc.Channel
    kubelet: Path

    @property
    def controller(self) -> rpc.ControllerStub:
        return rpc.ControllerStub(self.channel)

    @property
    def node(self) -> rpc.NodeStub:
        return rpc.NodeStub(self.channel)


@contextlib.contextmanager
def csi_driver(node: NetNode, kube: Kube, root: Path) -> Iterator[Csi]:
    """``statehold csi --cluster`` of one node, in the test process on a real socket; its
    kubelet directory under ``root`` (released after: mounts under it unmounted)."""
    engine = Node(node.home)
    kubelet = root / f"kubelet-{node.name}"
    kubelet.mkdir(parents=True)
    sock = root / f"csi-{node.name}.sock"
    cfg = ServerConfig(endpoint=f"unix://{sock}", node_id=node.name, mode="all", home=node.home,
                       allowed_roots=(kubelet,), grace=2.0)
    server = CsiServer(cfg, local=LocalBackend(cfg.backend_config(), node=engine),
                       with_shared=False, kube=kube)
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield Csi(engine, server, channel, kubelet)
    finally:
        channel.close()
        server.stop(0)
        release_home(kubelet)
        engine.close()


# -- the world ------------------------------------------------------------------------------------

@dataclass
class Volume:
    handle: str
    pv: str
    context: dict[str, str]

    @property
    def name(self) -> str:
        return self.handle.split("/", 1)[1]


@dataclass
class World:
    cluster: Cluster
    agents: Agents
    kube: Kube
    fleet: AgentFleet
    heartbeat: Heartbeat
    csi: dict[str, Csi] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)

    def at(self, name: str) -> NetNode:
        return next(n for n in self.cluster.nodes if n.name == name)

    # -- the operator ------------------------------------------------------------------------
    def status(self, v: Volume) -> dict[str, Any]:
        return dict(self.kube.get(REPLICATED_VOLUME, v.pv).get("status") or {})

    def reconcile(self) -> None:
        """One pass of the operator's ticker; at most one copy writable after it."""
        replication_pass(self.kube, self.fleet, _now)
        for v in self.volumes:
            with contextlib.suppress(NotFound):
                writable = self.writable(v)
                assert len(writable) <= 1, f"{v.handle}: copies writable at once: {writable}"

    def converge(self, cond: Callable[[], Any], what: str, timeout: float = 240) -> Any:
        """Reconcile passes until ``cond`` holds (polled between passes)."""
        def step() -> Any:
            self.reconcile()
            return cond()
        return wait_for(step, timeout, what)

    # -- copies ------------------------------------------------------------------------------
    def state(self, node: NetNode, v: Volume) -> CopyState:
        """The copy's replication state as persisted on the node's disk."""
        return StateStore(node.home / "pools" / node.pool / ".statehold").load(v.name)

    def writable(self, v: Volume) -> list[str]:
        epoch = self.status(v).get("epoch")
        return [n.name for n in self.cluster.nodes
                if (s := self.state(n, v)).role.value == "primary" and s.epoch == epoch]

    def report(self, node: NetNode, v: Volume) -> CopyReport | None:
        """The node's agent's answer about its copy (None: no answer, or no copy)."""
        try:
            return self.fleet.copy_state(node.name, v.handle)
        except StateholdError:
            return None

    # -- CSI ---------------------------------------------------------------------------------
    def create_volume(self, node: NetNode, pv: str, size: int, replicas: int, rpo: str) -> Volume:
        """CreateVolume on ``node`` (an XFS filesystem volume), then the PV the external
        provisioner would make of the answer: node affinity by the copy label."""
        vol = self.csi[node.name].controller.CreateVolume(pb.CreateVolumeRequest(
            name=pv, volume_capabilities=[mount_cap("xfs")],
            parameters={"replicas": str(replicas), "rpo": rpo, "csi.storage.k8s.io/fstype": "xfs"},
            capacity_range=pb.CapacityRange(required_bytes=size))).volume
        v = Volume(vol.volume_id, pv, dict(vol.volume_context))
        self.kube.create({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": str(size)}, "accessModes": ["ReadWriteOnce"],
                     "volumeMode": "Filesystem", "persistentVolumeReclaimPolicy": "Retain",
                     "csi": {"driver": "csi.statehold.io", "volumeHandle": v.handle,
                             "fsType": "xfs", "volumeAttributes": v.context},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": node_label(v.handle), "operator": "In", "values": ["true"]}]}]}}}})
        self.volumes.append(v)
        return v

    def _paths(self, node: NetNode, v: Volume) -> tuple[Path, Path]:
        kubelet = self.csi[node.name].kubelet
        staging = kubelet / "plugins" / "staging" / v.pv
        target = kubelet / "pods" / "pg" / "volumes" / v.pv
        staging.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        return staging, target

    def stage_code(self, node: NetNode, v: Volume) -> grpc.StatusCode:
        """NodeStage's answer on ``node``, retried as kubelet does while it is ABORTED (the
        copy's replication lock is held for a moment while the agent takes a point)."""
        staging, _ = self._paths(node, v)
        req = pb.NodeStageVolumeRequest(volume_id=v.handle, staging_target_path=str(staging),
                                        volume_capability=mount_cap("xfs"), volume_context=v.context)

        def attempt() -> grpc.StatusCode | None:
            try:
                self.csi[node.name].node.NodeStageVolume(req)
            except grpc.RpcError as exc:
                return None if exc.code() == C.ABORTED else exc.code()  # type: ignore[no-any-return]
            return C.OK
        return wait_for(attempt, 60, f"NodeStage on {node.name} answered")  # type: ignore[no-any-return]

    def publish(self, node: NetNode, v: Volume) -> Path:
        """NodeStage (must be OK) and NodePublish on ``node``: the pod's mount point."""
        code = self.stage_code(node, v)
        assert code == C.OK, f"NodeStage on {node.name}: {code}"
        staging, target = self._paths(node, v)
        self.csi[node.name].node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=v.handle, staging_target_path=str(staging), target_path=str(target),
            volume_capability=mount_cap("xfs"), volume_context=v.context))
        return target

    def unpublish(self, node: NetNode, v: Volume) -> None:
        staging, target = self._paths(node, v)
        stub = self.csi[node.name].node
        stub.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=v.handle,
                                                                target_path=str(target)))
        stub.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=v.handle,
                                                            staging_target_path=str(staging)))

    def forget(self, v: Volume) -> None:
        """Delete what the test made in the API for ``v``: PV, record, their Events."""
        with contextlib.suppress(NotFound):
            self.kube.delete(PV, v.pv)
        with contextlib.suppress(NotFound):
            self.kube.delete(REPLICATED_VOLUME, v.pv)
        for ev in self.kube.list(EVENT, "default"):
            if (ev.get("involvedObject") or {}).get("name") == v.pv:
                with contextlib.suppress(NotFound):
                    self.kube.delete(EVENT, ev["metadata"]["name"], "default")


def point_seq(point: str | None) -> tuple[int, int]:
    """(epoch, seq) of a point id; (0, 0) for none."""
    return parse_point(point) if point else (0, 0)


# -- PostgreSQL ---------------------------------------------------------------------------------

def as_postgres(argv: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
    """A long-running client as the postgres user; its pid is the client's own (not a
    ``runuser`` in front of it), so it is stopped by that pid."""
    return subprocess.Popen(list(argv), user="postgres", group="postgres", extra_groups=[],
                            env={**os.environ, "LC_ALL": "C", "HOME": "/var/lib/postgresql"},
                            cwd="/", text=True, **kw)


def pgbench(pg: Postgres, *args: str) -> subprocess.Popen[str]:
    return as_postgres([_pg_bin("pgbench"), "-h", str(pg.sockdir), "-p", "5432", *args, "postgres"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_client(proc: subprocess.Popen[str]) -> None:
    """SIGKILL one client we started (by its pid) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc/<pid>/stat: the field after the state)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def power_off(pg: Postgres) -> list[int]:
    """Every process of the instance SIGKILLed, as by a power cut: the postmaster is stopped
    first (SIGSTOP: it forks nothing more), then it and its children are killed by pid.
    Returns the pids; waits until they are gone. The instance is not ``started`` after."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    pids = [postmaster, *_children(postmaster)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pg.started = False
    wait_for(lambda: all(_gone(p) for p in pids), 60, "the killed PostgreSQL processes gone")
    return pids


class Ledger(threading.Thread):
    """Commits 1, 2, 3, ... into ``ledger`` (one client, autocommit: each insert returns
    only once committed, with ``fsync`` and ``synchronous_commit`` on). After each commit
    returned it reads ``seq()`` (the primary's last point number) and keeps it: every id
    whose ``seq_after`` is below a point's number committed before that point's snapshot
    was taken (the number is persisted before the snapshot). Ends when the server goes."""

    def __init__(self, pg: Postgres, seq: Callable[[], int]) -> None:
        super().__init__(name="ledger", daemon=True)
        self.seq = seq
        self.proc = as_postgres(
            [_pg_bin("psql"), "-h", str(pg.sockdir), "-p", "5432", "-d", "postgres", "-X", "-A",
             "-t", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
        self.seq_after: dict[int, int] = {}
        self.last = 0
        self.progress = threading.Condition()
        self.error: BaseException | None = None
        self.ended = False

    def run(self) -> None:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            n = 0
            while True:
                n += 1
                try:
                    proc.stdin.write(f"INSERT INTO ledger (id) VALUES ({n});\n\\echo ok {n}\n")
                    proc.stdin.flush()
                except (BrokenPipeError, ValueError):
                    break  # the client is gone: the server was killed under it
                while (line := proc.stdout.readline()) and line.strip() != f"ok {n}":
                    pass
                if not line:
                    break  # the connection went with the server
                seq = self.seq()
                with self.progress:
                    self.seq_after[n], self.last = seq, n
                    self.progress.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            with self.progress:
                self.ended = True
                self.progress.notify_all()

    def wait_for(self, n: int, timeout: float = 120) -> None:
        with self.progress:
            self.progress.wait_for(lambda: self.last >= n or self.ended, timeout=timeout)
        assert self.error is None, self.error
        assert self.last >= n, f"the ledger stopped at {self.last} (wanted {n})"

    def finish(self) -> None:
        """After the server died: the client is reaped, the thread joined."""
        stop_client(self.proc)
        self.join(timeout=60)
        assert self.error is None, self.error
