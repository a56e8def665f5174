"""Replicated volumes end to end with real parts: three nodes, each a network namespace
with its own pool (named per node, as StoragePools are) and its own ``statehold agent
serve`` process (real TCP, mutual TLS with certificates from the CA the operator keeps in a
Secret); the controller's reconciler (``replication_pass``) in the test process against
MemoryKube, reaching the agents through the gRPC ``AgentFleet`` over a veth from the
test's namespace into the nodes' switch; and per node the CSI driver on a real socket,
whose NodeStage reads the same records (the stage-time fence).

Cases (docs/design/replication.md §9.4, §9.5, §9.7), each checking bytes by sha256 against
the last acknowledged point:

* failover with the old primary returning: Node NotReady alone promotes nothing; with the
  out-of-service taint the epoch is recorded first, then the newest replica promoted; the
  writes only the old primary had are lost, nothing else; the returning old primary is
  fenced at NodeStage (its state says stale, durably), then resynced by a diff and becomes
  a replica;
* a planned move under writes: the old primary refuses to stage once ``moving`` is
  recorded, the final sync waits for the unstage, the target serves every write that was
  acknowledged to the workload;
* a node retired with three volumes on it: every copy re-placed, the primary moved away,
  the old copies released (engine volumes, state, labels), the pool ``Retired``.

After every reconcile pass the test reads every copy's state from disk and asserts that at
most one copy is writable (primary at the record's epoch).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from statehold.agent import pki
from statehold.agent.fleet import AgentFleet
from statehold.controller import agent_certs
from statehold.controller.agent_directory import KubeDirectory
from statehold.controller.replication import replication_pass
from statehold.controller.schemas import validate_custom_resource
from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node
from statehold.errors import StateholdError
from statehold.kube.kinds import NODE, PV, REPLICATED_VOLUME, STORAGE_POOL
from statehold.kube.memory import MemoryKube
from statehold.replication.points import node_label
from tests.fixtures.engine import release_home
from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import PORT, Agents, MiB, scribble, sha256
from tests.integration.csi.harness import block_cap
from tests.unit.controller.replication_fakes import node as make_node
from tests.unit.controller.replication_fakes import pool as make_pool
from tests.unit.controller.replication_fakes import set_ready, taint_out_of_service

pytestmark = [pytest.mark.root, pytest.mark.slow]

NS = "statehold-system"
GiB = 1024 * MiB
C = grpc.StatusCode


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Csi:
    """One node's CSI driver, in the test process, on a real socket."""

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


@dataclass
class Volume:
    """A replicated volume: its handle, PV (= record) name and engine name."""

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
    kube: MemoryKube
    fleet: AgentFleet
    csi: dict[str, Csi] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    passes: int = 0

    # -- nodes -------------------------------------------------------------------------
    def at(self, name: str) -> NetNode:
        return next(n for n in self.cluster.nodes if n.name == name)

    def node_of_pool(self, pool: str) -> NetNode:
        return next(n for n in self.cluster.nodes if n.pool == pool)

    # -- the cluster side ----------------------------------------------------------------
    def record(self, v: Volume) -> dict[str, Any]:
        return self.kube.get(REPLICATED_VOLUME, v.pv)

    def status(self, v: Volume) -> dict[str, Any]:
        return dict(self.record(v).get("status") or {})

    def reconcile(self) -> None:
        """One pass of the operator's ticker, then the invariant over what is on disk."""
        replication_pass(self.kube, self.fleet, now)
        self.passes += 1
        for v in self.volumes:
            self.assert_one_writable(v)

    def converge(self, cond: Callable[[], Any], what: str, timeout: float = 240) -> Any:
        """Reconcile passes until ``cond`` holds (a condition, polled between passes)."""
        def step() -> Any:
            self.reconcile()
            return cond()
        return wait_for(step, timeout, what)

    # -- copies on disk ------------------------------------------------------------------
    def copy_file(self, node: NetNode, v: Volume) -> Path:
        return node.home / "pools" / node.pool / "volumes" / f"{v.name}.img"

    def state(self, node: NetNode, v: Volume) -> dict[str, Any] | None:
        path = node.home / "pools" / node.pool / ".statehold" / "replication" / f"{v.name}.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def writable(self, v: Volume) -> list[str]:
        """Nodes whose copy would pass check_writable at the record's epoch right now."""
        epoch = self.status(v).get("epoch")
        out = []
        for node in self.cluster.nodes:
            st = self.state(node, v)
            if st is not None and st["role"] == "primary" and st["epoch"] == epoch:
                out.append(node.name)
        return out

    def assert_one_writable(self, v: Volume) -> None:
        try:
            writable = self.writable(v)
        except StateholdError:  # the record is gone (retired): nothing to check
            return
        assert len(writable) <= 1, f"{v.handle}: copies writable at once: {writable}"

    def copy_sha(self, node: NetNode, v: Volume) -> str:
        return sha256(self.copy_file(node, v))

    # -- CSI -----------------------------------------------------------------------------
    def create_volume(self, node: NetNode, name: str, replicas: int) -> Volume:
        vol = self.csi[node.name].controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, volume_capabilities=[block_cap()],
            parameters={"replicas": str(replicas), "rpo": "5s"},
            capacity_range=pb.CapacityRange(required_bytes=256 * MiB))).volume
        v = Volume(vol.volume_id, name, dict(vol.volume_context))
        # what external-provisioner makes of the answer: the PV, affinity by copy label
        self.kube.create({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "256Mi"}, "accessModes": ["ReadWriteOnce"],
                     "volumeMode": "Block",
                     "claimRef": {"namespace": "db", "name": f"data-{name}"},
                     "csi": {"driver": "csi.statehold.io", "volumeHandle": v.handle,
                             "volumeAttributes": v.context},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": node_label(v.handle), "operator": "In", "values": ["true"]}]}]}}}})
        self.volumes.append(v)
        return v

    def stage_req(self, node: NetNode, v: Volume) -> pb.NodeStageVolumeRequest:
        staging = self.csi[node.name].kubelet / "plugins" / "staging" / v.name
        staging.mkdir(parents=True, exist_ok=True)
        return pb.NodeStageVolumeRequest(volume_id=v.handle, staging_target_path=str(staging),
                                         volume_capability=block_cap(), volume_context=v.context)

    def stage(self, node: NetNode, v: Volume) -> str:
        """NodeStage on ``node`` (block: the copy's loop device); the device path."""
        code = self.stage_code(node, v)
        assert code == C.OK, code
        device = self.device(node, v)
        assert device is not None
        return device

    def stage_code(self, node: NetNode, v: Volume) -> grpc.StatusCode:
        """NodeStage's answer, retried as kubelet does while it is ABORTED (the copy's
        replication lock is held for a moment while the agent takes a point)."""
        def attempt() -> grpc.StatusCode | None:
            try:
                self.csi[node.name].node.NodeStageVolume(self.stage_req(node, v))
            except grpc.RpcError as exc:
                return None if exc.code() == C.ABORTED else exc.code()  # type: ignore[no-any-return]
            return C.OK
        return wait_for(attempt, 60, f"NodeStage on {node.name} answered")  # type: ignore[no-any-return]

    def unstage(self, node: NetNode, v: Volume) -> None:
        staging = self.csi[node.name].kubelet / "plugins" / "staging" / v.name
        self.csi[node.name].node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=v.handle, staging_target_path=str(staging)))

    def device(self, node: NetNode, v: Volume) -> str | None:
        engine = self.csi[node.name].engine
        engine.refresh()
        return engine.pool(node.pool).get_volume(v.name).device

    # -- the agents' view ----------------------------------------------------------------
    def report(self, node: NetNode, v: Volume) -> Any:
        try:
            return self.fleet.copy_state(node.name, v.handle)
        except StateholdError:
            return None


def write_device(device: str, mib: int, seed: int) -> None:
    """``mib`` MiB of random bytes at random MiB offsets of a block device, fsynced: what a
    workload has written and been told is durable."""
    rng = random.Random(seed)
    fd = os.open(device, os.O_WRONLY)
    try:
        slots = os.lseek(fd, 0, os.SEEK_END) // MiB
        for _ in range(mib):
            os.pwrite(fd, rng.randbytes(MiB), rng.randrange(slots) * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def csi_driver(node: NetNode, kube: MemoryKube, root: Path) -> Iterator[Csi]:
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


@pytest.fixture
def world(net_cluster: Callable[..., Cluster], scratch: Path) -> Iterator[World]:
    """Three nodes (pools pool-a, pool-b, pool-c) known to MemoryKube as Ready Nodes with
    their InternalIP and Ready StoragePools; their agents running with certificates from
    the operator's CA Secret (replication loop every second); a CSI driver per node; the
    operator's fleet reaching the agents from the test's namespace."""
    cluster = net_cluster(3, image_size="2Gi", pools=("pool-a", "pool-b", "pool-c"))
    cluster.attach_host()
    kube = MemoryKube(admit=validate_custom_resource)
    for n in cluster.nodes:
        make_node(kube, n.name)
        kube.patch_status(NODE, n.name, {"addresses": [{"type": "InternalIP", "address": n.ip}]})
        make_pool(kube, n.pool, n.name, free=100 * GiB)
    issuer = pki.Issuer()
    ca = agent_certs.ensure_ca(kube, NS, issuer)
    agent_certs.ensure_node_certs(kube, NS, ca, issuer, now())
    agents = Agents(cluster, scratch / "ca")
    for n in cluster.nodes:  # what the DaemonSet's agent reads from its Secret
        certs = agent_certs.read_node_certs(kube.get(
            agent_certs.SECRET, agent_certs.node_secret_name(n.name), NS))
        pki.write_node_files(agents.certs(n), certs.ca, pki.KeyPair(certs.cert, certs.key))
    cert, key = agent_certs.issue_operator(ca, issuer)
    fleet = AgentFleet(pki.Bundle(ca.cert, pki.KeyPair(cert, key)), KubeDirectory(kube, PORT),
                       timeout=20)
    for n in cluster.nodes:
        agents.start(n, interval=1.0)
    with contextlib.ExitStack() as stack:
        w = World(cluster, agents, kube, fleet)
        for n in cluster.nodes:
            w.csi[n.name] = stack.enter_context(csi_driver(n, kube, scratch))
        try:
            yield w
        finally:
            fleet.close()


def replicated(w: World, v: Volume, *nodes: NetNode) -> bool:
    """Every copy on ``nodes`` is a replica holding the primary's current bytes."""
    st = w.status(v)
    primary = w.at(st["primary"])
    want = w.copy_sha(primary, v)
    for n in nodes:
        r = w.report(n, v)
        if r is None or r.role != "replica" or w.copy_sha(n, v) != want:
            return False
    return True


# -- §9.4: failover, and the old primary returning -------------------------------------------

def test_failover_fences_the_old_primary_and_resyncs_it_by_diff(world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-fail", replicas=3)
    w.converge(lambda: w.status(v).get("primary") == "n1" and replicated(w, v, n2, n3),
               "epoch 1 on n1 and two seeded replicas")
    assert w.status(v)["epoch"] == 1
    assert w.stage_code(n2, v) == C.FAILED_PRECONDITION  # a replica: the primary serves
    device = w.stage(n1, v)
    write_device(device, 16, seed=1)                       # acknowledged to the workload
    acked = w.copy_sha(n1, v)
    w.converge(lambda: w.copy_sha(n2, v) == w.copy_sha(n3, v) == acked,
               "both replicas at a point holding the writes")
    point = w.report(n2, v).point
    assert sha256(w.agents.point_file(n1, point, v.name)) == acked  # the primary's own point

    # n1 dies: its agent first (nothing more is replicated), then writes only it has
    w.agents.kill(n1)
    write_device(device, 4, seed=2)
    lost = w.copy_sha(n1, v)
    assert lost != acked
    set_ready(w.kube, "n1", False)
    for _ in range(3):  # NotReady alone: it may still be writing, nothing is promoted
        w.reconcile()
    assert (w.status(v)["epoch"], w.status(v)["primary"]) == (1, "n1")
    assert w.stage_code(n2, v) == C.FAILED_PRECONDITION and w.device(n2, v) is None

    taint_out_of_service(w.kube, "n1")  # the administrator: n1 is off
    w.converge(lambda: w.status(v)["epoch"] == 2, "the failover recorded")
    new = w.at(w.status(v)["primary"])
    other = n3 if new is n2 else n2
    assert new is not n1
    w.converge(lambda: (r := w.report(new, v)) is not None and (r.role, r.epoch) == ("primary", 2),
               "the new primary promoted")
    assert w.copy_sha(new, v) == acked          # the last acknowledged point, nothing else
    assert w.writable(v) == [new.name]
    assert w.stage_code(other, v) == C.FAILED_PRECONDITION
    device2 = w.stage(new, v)
    write_device(device2, 4, seed=3)
    served = w.copy_sha(new, v)

    # n1 comes back (rebooted: its loop device is gone); kubelet retries the old stage
    w.csi["n1"].engine.pool(n1.pool).detach(v.name)
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION  # fenced...
    state = w.state(n1, v)
    assert state is not None and (state["role"], state["epoch"]) == ("stale", 2)  # ...durably
    assert w.device(n1, v) is None and w.copy_sha(n1, v) == lost
    taint_out_of_service(w.kube, "n1", on=False)
    set_ready(w.kube, "n1", True)
    w.agents.start(n1, interval=1.0)
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica"
               and w.copy_sha(n1, v) == served, "the old primary resynced as a replica", 300)
    w.converge(lambda: w.copy_sha(other, v) == served, "the other replica caught up")
    sent = {r["node"]: int(r["sent_bytes"]) for r in w.agents.status(new, v.name)["replicas"]}
    assert sent["n1"] < 12 * MiB, sent  # a diff from the common point, not a new seed (~20 MiB)
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION  # a replica still does not stage
    assert w.writable(v) == [new.name]


# -- §9.5: a planned move under writes --------------------------------------------------------

def test_planned_move_under_writes_loses_nothing_acknowledged(world: World) -> None:
    w = world
    n1, n2, _n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-move", replicas=2)
    w.converge(lambda: replicated(w, v, n2), "a seeded replica on n2")
    device = w.stage(n1, v)
    stop = threading.Event()
    written: list[int] = []

    def workload() -> None:
        seed = 100
        while not stop.is_set():
            write_device(device, 1, seed=seed)  # each MiB is fsynced: acknowledged
            written.append(seed)
            seed += 1

    writer = threading.Thread(target=workload, name="workload")
    started = time.time()
    writer.start()
    try:
        w.converge(lambda: len(written) >= 8 and (r := w.report(n2, v)) is not None
                   and (r.point_time or 0) > started, "a point taken under writes acknowledged")
        w.kube.patch(REPLICATED_VOLUME, v.pv, {"spec": {"move": {"to": "n2"}}})
        w.converge(lambda: (w.status(v).get("moving") or {}).get("to") == "n2", "the move recorded")
        for _ in range(3):  # the pod still writes: the final sync waits
            w.reconcile()
        assert (w.status(v)["epoch"], w.status(v)["primary"]) == (1, "n1")
        assert w.stage_code(n1, v) == C.FAILED_PRECONDITION  # kubelet's retry is refused now
    finally:
        stop.set()
        writer.join(60)
    assert len(written) >= 8
    w.unstage(n1, v)  # the pod is gone
    final = w.copy_sha(n1, v)
    w.converge(lambda: w.status(v)["primary"] == "n2", "the move done")
    assert w.status(v)["epoch"] == 2 and "moving" not in w.status(v)
    assert w.copy_sha(n2, v) == final  # every write the workload was told was durable
    w.stage(n2, v)
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica"
               and w.copy_sha(n1, v) == final, "the old primary a replica of the new one")
    assert w.writable(v) == ["n2"]
    w.unstage(n2, v)


# -- §9.7: a node retired with three volumes on it --------------------------------------------

def test_retiring_a_node_replaces_every_copy_and_releases_the_old_ones(world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    # n3's pool has the most room: every volume gets a copy there
    w.kube.patch_status(STORAGE_POOL, "pool-a", {"allocatable": 50 * GiB})
    w.kube.patch_status(STORAGE_POOL, "pool-b", {"allocatable": 40 * GiB})
    v1 = w.create_volume(n3, "pv-ret-1", replicas=2)   # primary on n3, replica on n1
    v2 = w.create_volume(n1, "pv-ret-2", replicas=2)   # replica on n3
    v3 = w.create_volume(n2, "pv-ret-3", replicas=2)   # replica on n3
    data = {}
    for v, home, seed in ((v1, n3, 11), (v2, n1, 12), (v3, n2, 13)):
        scribble(w.copy_file(home, v), 12, seed=seed)
        data[v.pv] = w.copy_sha(home, v)
    w.converge(lambda: replicated(w, v1, n1) and replicated(w, v2, n3) and replicated(w, v3, n3),
               "every volume with a replica (each with a copy on n3)")

    w.kube.patch(STORAGE_POOL, "pool-c", {"spec": {"decommission": True}})  # statehold node retire n3

    def retired() -> bool:
        cond = {c["type"]: c for c in (w.kube.get(STORAGE_POOL, "pool-c").get("status") or {})
                .get("conditions", [])}.get("Retiring") or {}
        return cond.get("reason") == "Retired"

    w.converge(retired, "pool-c retired", 400)
    for v in (v1, v2, v3):
        st = w.status(v)
        holders = sorted(c["node"] for c in st["copies"])
        assert holders == ["n1", "n2"], (v.pv, st["copies"])
        primary = w.at(st["primary"])
        other = n2 if primary is n1 else n1
        w.converge(lambda v=v, primary=primary, other=other: replicated(w, v, other),
                   f"{v.pv}: its replica current")
        assert w.copy_sha(primary, v) == w.copy_sha(other, v) == data[v.pv]
        # the copy on n3 is gone: engine volume, replication state, copy label
        assert not w.copy_file(n3, v).exists()
        assert w.state(n3, v) is None
        assert node_label(v.handle) not in (w.kube.get(NODE, "n3")["metadata"].get("labels") or {})
    assert w.status(v1)["primary"] == "n1" and w.status(v1)["epoch"] == 2  # moved away
    w.kube.delete(PV, v1.pv)  # a record whose PV is gone is retired (replicas released)
    w.converge(lambda: not any(r["metadata"]["name"] == v1.pv
                               for r in w.kube.list(REPLICATED_VOLUME)), "v1's record retired")
