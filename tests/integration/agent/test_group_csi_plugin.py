"""Group snapshots across nodes as a deployment takes them: a real ``statehold csi`` node
plugin process on n1, configured as the chart configures it (``--mode=all --cluster
--agent-socket --agent-port``), asks n1's agent over the agent's node-local socket to
coordinate; the agents (netns nodes n1 and n2, one pool each, mutual TLS) freeze and keep
their members. The plugin holds no agent certificate: it reads the cluster (Nodes'
InternalIP, StoragePools' node) with exactly the chart's RBAC of its account
``statehold-node`` (the test's API server refuses anything else, and no call may be
refused).

* CreateVolumeGroupSnapshot over the plugin's CSI socket with members on n1 and n2: the
  group is taken on both nodes, a retry answers the same group, GetVolumeGroupSnapshot
  reports it ready, DeleteVolumeGroupSnapshot leaves nothing on either node;
* the plugin without ``--agent-socket`` (the chart with ``agent.enabled: false``) refuses
  such a group (FAILED_PRECONDITION, saying why), and with the socket but its agent gone
  answers UNAVAILABLE (retryable) naming the socket; neither keeps nor freezes anything.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from statehold.controller.schemas import validate_custom_resource
from statehold.csi import naming
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.engine import groupparts
from statehold.engine.node import Node
from statehold.engine.types import FsType, MiB
from statehold.kube.kinds import NODE
from statehold.kube.memory import MemoryKube
from tests.fixtures.netns import Cluster, NetNode
from tests.integration.agent.harness import (
    Agents,
    kube_relay,
    start_agent_with_local_socket,
    start_csi_plugin,
    write_kubeconfig,
)
from tests.integration.agent.relay import UnixRelay
from tests.integration.agent.test_group_across_nodes import LEASE, VOLUMES, World
from tests.integration.engine.frozen import frozen_targets
from tests.unit.controller.replication_fakes import node as make_node
from tests.unit.controller.replication_fakes import pool as make_pool
from tests.unit.kube.apiserver import serve
from tests.unit.kube.rbac import rules_for
from tests.unit.kube.validation import render

pytestmark = [pytest.mark.root]

NS = "statehold-system"
IDS = ["pa/va", "pb/vb"]
C = grpc.StatusCode


@dataclass
class Deployed:
    world: World
    kubeconfig: Path
    agent_socket: Path
    denied: list[str]
    plugins: list[grpc.Channel]

    @property
    def n1(self) -> NetNode:
        return self.world.node("n1")

    def plugin(self, name: str, *, agent_socket: Path | None) -> rpc.GroupControllerStub:
        """A ``statehold csi`` process on n1 (its own CSI socket); its GroupController."""
        sock = self.world.scratch / f"{name}.sock"
        kubelet = self.world.scratch / f"kubelet-{name}"
        kubelet.mkdir()
        start_csi_plugin(self.world.cluster, self.n1, sock, kubeconfig=self.kubeconfig,
                         kubelet=kubelet, agent_socket=agent_socket,
                         log=self.world.scratch / f"coord-{name}.log")  # in World.logs()
        channel = grpc.insecure_channel(f"unix://{sock}")
        self.plugins.append(channel)
        return rpc.GroupControllerStub(channel)  # type: ignore[no-untyped-call]

    def kept_anywhere(self, group: str) -> dict[str, list[str]]:
        return {n: self.world.kept(n, group) for n in ("n1", "n2")}


@pytest.fixture
def deployed(net_cluster: Callable[..., Cluster], scratch: Path) -> Iterator[Deployed]:
    """Two nodes with a mounted XFS volume each (n1: pa/va, n2: pb/vb), known to the API
    server as Nodes (InternalIP) and StoragePools; n2's agent, and n1's agent serving its
    local socket; the API served with the chart's RBAC of statehold-node, reached from n1."""
    cluster = net_cluster(2, pools=("pa", "pb"))
    kube = MemoryKube(admit=validate_custom_resource)
    for n in cluster.nodes:
        make_node(kube, n.name)
        kube.patch_status(NODE, n.name, {"addresses": [{"type": "InternalIP", "address": n.ip}]})
        make_pool(kube, n.pool, n.name)
    rules = rules_for(render.render_chart(name="statehold", namespace=NS), "statehold-node")
    denied: list[str] = []
    agents = Agents(cluster, scratch / "ca")
    engines: dict[str, Node] = {}
    targets: dict[str, Path] = {}
    channels: list[grpc.Channel] = []
    with serve(kube, tokens={"t": rules}, denied=denied) as url, contextlib.ExitStack() as stack:
        api = UnixRelay(scratch / "kube.sock", int(url.rsplit(":", 1)[1]))
        api.start()
        stack.callback(api.stop)
        n1 = next(n for n in cluster.nodes if n.name == "n1")
        kube_relay(cluster, n1, api.path)
        try:
            for node in cluster.nodes:
                engine = engines[node.name] = Node(node.home)
                volume = VOLUMES[node.name]
                engine.pool(node.pool).create_volume(volume, 300 * MiB, fs=FsType.XFS)
                target = node.home / "mnt" / volume
                engine.pool(node.pool).mount(volume, target)
                targets[node.name] = target
            agent_socket = scratch / "agent-local" / "agent.sock"
            for node in cluster.nodes:
                if node is n1:
                    start_agent_with_local_socket(agents, node, agent_socket)
                else:
                    agents.start(node)
            yield Deployed(World(cluster, agents, engines, targets, scratch),
                           write_kubeconfig(scratch / "kubeconfig"), agent_socket, denied, channels)
        finally:
            for channel in channels:
                channel.close()
            for t in targets.values():  # nothing of ours may stay frozen for the teardown
                frozen_targets([str(t)], deadline=LEASE + 30)
            for engine in engines.values():
                engine.close()


def create(plugin: rpc.GroupControllerStub, name: str) -> pb.VolumeGroupSnapshot:
    reply = plugin.CreateVolumeGroupSnapshot(pb.CreateVolumeGroupSnapshotRequest(
        name=name, source_volume_ids=IDS, parameters={"freezeTimeout": "5s"}), timeout=300)
    taken: pb.VolumeGroupSnapshot = reply.group_snapshot
    return taken


def test_the_node_plugin_takes_reads_and_deletes_a_group_across_nodes_through_its_agent(
        deployed: Deployed) -> None:
    w = deployed.world
    # the socket is root's alone: 0600 in a 0700 directory
    assert stat.S_IMODE(deployed.agent_socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(deployed.agent_socket.parent.stat().st_mode) == 0o700
    plugin = deployed.plugin("csi-n1", agent_socket=deployed.agent_socket)
    name = "across-nodes"
    group = naming.engine_name(name)

    taken = create(plugin, name)
    assert taken.ready_to_use, w.logs()
    assert taken.group_snapshot_id == f"pa/{group}"
    assert sorted(s.source_volume_id for s in taken.snapshots) == IDS
    assert all(s.ready_to_use and s.group_snapshot_id == taken.group_snapshot_id
               for s in taken.snapshots)
    member_ids = sorted(s.snapshot_id for s in taken.snapshots)
    # each node keeps its member and the part's record, naming both nodes
    for node, pool in (("n1", "pa"), ("n2", "pb")):
        part = groupparts.read_part(w.engines[node].pool(pool), group)
        assert part is not None and part["nodes"] == ["n1", "n2"], (node, part)
        assert any(i.startswith(f"{pool}/") for i in member_ids)
    w.thawed()

    again = create(plugin, name)  # the sidecar's retry: the same group, nothing new
    assert sorted(s.snapshot_id for s in again.snapshots) == member_ids
    assert again.creation_time == taken.creation_time

    got = plugin.GetVolumeGroupSnapshot(pb.GetVolumeGroupSnapshotRequest(
        group_snapshot_id=taken.group_snapshot_id, snapshot_ids=member_ids), timeout=60)
    assert got.group_snapshot.ready_to_use
    assert sorted(s.snapshot_id for s in got.group_snapshot.snapshots) == member_ids

    plugin.DeleteVolumeGroupSnapshot(pb.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=taken.group_snapshot_id, snapshot_ids=member_ids), timeout=60)
    assert deployed.kept_anywhere(group) == {"n1": [], "n2": []}
    with pytest.raises(grpc.RpcError) as gone:
        plugin.GetVolumeGroupSnapshot(pb.GetVolumeGroupSnapshotRequest(
            group_snapshot_id=taken.group_snapshot_id), timeout=60)
    assert gone.value.code() == C.NOT_FOUND
    assert deployed.denied == []  # the chart's RBAC of statehold-node was enough


def test_without_its_agent_the_node_plugin_refuses_a_group_across_nodes(deployed: Deployed) -> None:
    w = deployed.world
    group = naming.engine_name("refused")
    unwired = deployed.plugin("csi-plain", agent_socket=None)
    with pytest.raises(grpc.RpcError) as refused:
        create(unwired, "refused")
    assert refused.value.code() == C.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "pb/vb" in details and "--agent-socket" in details, details

    wired = deployed.plugin("csi-wired", agent_socket=deployed.agent_socket)
    w.agents.kill(deployed.n1)  # SIGKILL: its socket file stays, nobody answers on it
    with pytest.raises(grpc.RpcError) as away:
        create(wired, "refused")
    assert away.value.code() == C.UNAVAILABLE  # the sidecar retries
    assert str(deployed.agent_socket) in (away.value.details() or "")

    assert deployed.kept_anywhere(group) == {"n1": [], "n2": []}
    w.thawed()
    assert deployed.denied == []
