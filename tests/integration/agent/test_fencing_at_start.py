"""Agents that fence on their own (issue 12; docs/design/replication.md §6.3, §8.4), with
real parts: three nodes as network namespaces, each with its pool and a ``statehold agent
serve --cluster`` process reading the ReplicatedVolume records from the test's API server
(MemoryKube over HTTP, reached through a relay: 127.0.0.1 in the node's namespace, a Unix
socket, 127.0.0.1 of the test), the operator's reconciler in the test process reaching the
agents over TCP and mutual TLS, a CSI driver per node on a real socket.

* an old primary whose agent comes back after a failover fences its copy (stale, durably)
  before it answers anything, streams nothing, and is resynced as a replica;
* an agent that cannot read the records serves but replicates no primary until it can;
* a partitioned old primary whose volume is still staged, with a writer holding a file open
  on its XFS mount, is made read-only once it learns of the failover — from the record, or
  from the controller's Demote when it cannot read the record: the writer gets EIO or EROFS
  and the copy's bytes do not change any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from statehold.agent import pki
from statehold.agent.fleet import AgentFleet
from statehold.controller import agent_certs
from statehold.controller.agent_directory import KubeDirectory
from statehold.controller.schemas import validate_custom_resource
from statehold.csi.gen import csi_pb2 as pb
from statehold.engine import readonly
from statehold.kube.kinds import NODE, REPLICATED_VOLUME, SECRET
from statehold.kube.memory import MemoryKube
from statehold.replication.points import node_label
from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import (
    PORT,
    Agents,
    MiB,
    kube_relay,
    scribble,
    start_cluster_agent,
    write_kubeconfig,
)
from tests.integration.agent.relay import UnixRelay
from tests.integration.agent.test_failover_e2e import (
    NS,
    GiB,
    Volume,
    World,
    csi_driver,
    now,
    replicated,
)
from tests.integration.csi.harness import mount_cap
from tests.unit.controller.replication_fakes import node as make_node
from tests.unit.controller.replication_fakes import pool as make_pool
from tests.unit.controller.replication_fakes import set_ready, taint_out_of_service
from tests.unit.kube.apiserver import serve

pytestmark = [pytest.mark.root, pytest.mark.slow]

C = grpc.StatusCode


@dataclass
class Fenced:
    """The world of test_failover_e2e, with agents reading the records."""

    w: World
    api: UnixRelay          # the records as the agents reach them; stop() is an outage
    kubeconfig: Path

    def restart_agent(self, node: NetNode) -> None:
        start_cluster_agent(self.w.agents, node, self.kubeconfig)


@pytest.fixture
def fenced(net_cluster: Callable[..., Cluster], scratch: Path) -> Iterator[Fenced]:
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
    for n in cluster.nodes:
        certs = agent_certs.read_node_certs(kube.get(
            SECRET, agent_certs.node_secret_name(n.name), NS))
        pki.write_node_files(agents.certs(n), certs.ca, pki.KeyPair(certs.cert, certs.key))
    cert, key = agent_certs.issue_operator(ca, issuer)
    # the agent CLI's controller calls (sync) with the operator's certificate of this CA
    pki.write_node_files(agents.controller_certs, ca.cert, pki.KeyPair(cert, key))
    fleet = AgentFleet(pki.Bundle(ca.cert, pki.KeyPair(cert, key)), KubeDirectory(kube, PORT),
                       timeout=20)
    with serve(kube) as url, contextlib.ExitStack() as stack:
        api = UnixRelay(scratch / "kube.sock", int(url.rsplit(":", 1)[1]))
        api.start()
        stack.callback(api.stop)
        for n in cluster.nodes:
            kube_relay(cluster, n, api.path)
        kubeconfig = write_kubeconfig(scratch / "kubeconfig")
        for n in cluster.nodes:
            start_cluster_agent(agents, n, kubeconfig)
        w = World(cluster, agents, kube, fleet)
        for n in cluster.nodes:
            w.csi[n.name] = stack.enter_context(csi_driver(n, kube, scratch))
        try:
            yield Fenced(w, api, kubeconfig)
        finally:
            fleet.close()


def state(w: World, node: NetNode, v: Volume) -> dict[str, Any]:
    found = w.state(node, v)
    assert found is not None, f"no replication state of {v.name} on {node.name}"
    return found


def point_of(w: World, node: NetNode, v: Volume) -> str | None:
    return state(w, node, v).get("point")


def sync_code(w: World, node: NetNode, v: Volume) -> int:
    """Exit code of ``statehold agent sync`` of ``node``'s copy (0 done, 5 refused:
    FailedPrecondition)."""
    code, _ = w.agents.ask(node, "sync", f"{node.pool}/{v.name}", check=False)
    return code


def settle(w: World, node: NetNode, cond: Callable[[], Any], what: str, timeout: float = 60) -> None:
    """``wait_for``, failing with the end of ``node``'s agent log."""
    try:
        wait_for(cond, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- agent log of {node.name}:\n{w.agents.log(node)}") from None


# -- (1) at start --------------------------------------------------------------------------------

def test_a_returning_old_primary_fences_itself_before_it_serves(fenced: Fenced) -> None:
    w = fenced.w
    n1, n2, n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-back", replicas=3)
    scribble(w.copy_file(n1, v), 8, seed=1)
    w.converge(lambda: replicated(w, v, n2, n3), "two replicas holding the primary's bytes")
    w.agents.kill(n1)
    scribble(w.copy_file(n1, v), 4, seed=2)  # written after the last point: lost by the failover
    set_ready(w.kube, "n1", False)
    taint_out_of_service(w.kube, "n1")
    w.converge(lambda: w.status(v)["epoch"] == 2, "the failover recorded")
    new = w.at(w.status(v)["primary"])
    assert (state(w, n1, v)["role"], state(w, n1, v)["epoch"]) == ("primary", 1)  # nobody told n1
    acked = {n.name: point_of(w, n, v) for n in (n2, n3)}

    # n1 comes back; no reconcile pass runs meanwhile: the agent fences its copy by itself,
    # before its first answer (the harness waits for a ping)
    fenced.restart_agent(n1)
    assert (state(w, n1, v)["role"], state(w, n1, v)["epoch"]) == ("stale", 2)
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION
    # it streams nothing as the primary it was: a sync of it is refused, the replicas keep
    # their points (the loop runs every second)
    assert sync_code(w, n1, v) == 5  # FailedPrecondition: a stale copy sends nothing
    assert {n.name: point_of(w, n, v) for n in (n2, n3)} == acked

    # the controller resyncs it as a replica of the new primary
    taint_out_of_service(w.kube, "n1", on=False)
    set_ready(w.kube, "n1", True)
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica"
               and w.copy_sha(n1, v) == w.copy_sha(new, v), "n1 resynced as a replica", 300)
    assert w.writable(v) == [new.name]


def test_without_the_records_an_agent_serves_but_replicates_no_primary(fenced: Fenced) -> None:
    w = fenced.w
    n1, n2, _n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-dark", replicas=2)
    w.converge(lambda: replicated(w, v, n2), "a seeded replica on n2")
    fenced.api.stop()  # the agents lose the API server; the controller (in-process) does not
    w.agents.kill(n1)
    before = point_of(w, n2, v)
    scribble(w.copy_file(n1, v), 4, seed=3)
    fenced.restart_agent(n1)  # it serves (the ping answered) ...
    assert (state(w, n1, v)["role"], state(w, n1, v)["epoch"]) == ("primary", 1)  # not fenced
    assert sync_code(w, n1, v) == 5  # ... but streams nothing: unconfirmed
    assert point_of(w, n2, v) == before and w.copy_sha(n2, v) != w.copy_sha(n1, v)
    fenced.api.start()  # the records are readable again: the primary is confirmed
    settle(w, n1, lambda: sync_code(w, n1, v) == 0, "the primary confirmed and synced")
    assert w.copy_sha(n2, v) == w.copy_sha(n1, v) and point_of(w, n2, v) != before


# -- (2) a fenced copy that is still staged ------------------------------------------------------

def create_fs_volume(w: World, node: NetNode, name: str) -> Volume:
    """A replicated XFS volume, as CreateVolume and external-provisioner make it."""
    vol = w.csi[node.name].controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_cap("xfs")],
        parameters={"replicas": "2", "rpo": "5s"},
        capacity_range=pb.CapacityRange(required_bytes=320 * MiB))).volume
    v = Volume(vol.volume_id, name, dict(vol.volume_context))
    w.kube.create({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "320Mi"}, "accessModes": ["ReadWriteOnce"],
                 "volumeMode": "Filesystem",
                 "claimRef": {"namespace": "db", "name": f"data-{name}"},
                 "csi": {"driver": "csi.statehold.io", "volumeHandle": v.handle,
                         "volumeAttributes": v.context, "fsType": "xfs"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": node_label(v.handle), "operator": "In", "values": ["true"]}]}]}}}})
    w.volumes.append(v)
    return v


def staging(w: World, node: NetNode, v: Volume) -> Path:
    return w.csi[node.name].kubelet / "plugins" / "staging" / v.name


def stage_fs(w: World, node: NetNode, v: Volume) -> Path:
    target = staging(w, node, v)
    target.mkdir(parents=True, exist_ok=True)
    w.csi[node.name].node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=v.handle, staging_target_path=str(target), volume_capability=mount_cap("xfs"),
        volume_context=v.context))
    return target


def sealed(w: World, node: NetNode, v: Volume, target: Path) -> bool:
    """The copy's loop device read-only and its filesystem remounted read-only or shut
    down (its root no longer opens): observed without writing anything."""
    device = w.device(node, v)
    if device is None or not readonly.device_readonly(device):
        return False
    try:
        os.listdir(target)
    except OSError as exc:
        return exc.errno == errno.EIO  # shut down
    return os.statvfs(target).f_flag & os.ST_RDONLY != 0


@pytest.mark.parametrize("learns_by", ["record", "demote"])
def test_a_partitioned_old_primary_still_staged_is_made_read_only(fenced: Fenced,
                                                                   learns_by: str) -> None:
    w = fenced.w
    n1, n2, _n3 = w.cluster.nodes
    v = create_fs_volume(w, n1, f"pv-part-{learns_by}")
    w.converge(lambda: w.status(v).get("primary") == "n1", "epoch 1 on n1")
    target = stage_fs(w, n1, v)
    writer = os.open(target / "journal", os.O_WRONLY | os.O_CREAT, 0o644)  # the workload
    try:
        os.write(writer, os.urandom(MiB))
        os.fsync(writer)
        w.converge(lambda: replicated(w, v, n2), "the replica holding the workload's bytes")

        # n1 is cut off from the other nodes and the controller (not dead: its workload
        # goes on writing); the administrator promotes n2's copy
        w.cluster.link_down(n1)
        if learns_by == "demote":
            fenced.api.stop()  # n1's agent cannot read the records either
        set_ready(w.kube, "n1", False)
        w.kube.patch(REPLICATED_VOLUME, v.pv, {"spec": {"promote": {"node": "n2"}}})
        w.converge(lambda: (w.status(v)["epoch"], w.status(v)["primary"]) == (2, "n2"),
                   "the promote recorded")
        w.converge(lambda: (r := w.report(n2, v)) is not None and r.role == "primary",
                   "n2 promoted")

        if learns_by == "demote":  # the link returns: the controller demotes n1's copy
            w.cluster.link_up(n1)
            set_ready(w.kube, "n1", True)
            w.converge(lambda: state(w, n1, v)["role"] == "stale", "n1 demoted by the controller")
        settle(w, n1, lambda: state(w, n1, v)["role"] == "stale", "n1 fenced")
        settle(w, n1, lambda: sealed(w, n1, v, target), "n1's staged copy sealed")
        frozen = w.copy_sha(n1, v)
        with pytest.raises(OSError) as held:  # the surviving writer
            os.write(writer, os.urandom(MiB))
            os.fsync(writer)
        assert held.value.errno in (errno.EIO, errno.EROFS)
        with pytest.raises(OSError) as fresh:  # and anyone else
            (target / "other").write_bytes(b"diverging")
        assert fresh.value.errno in (errno.EIO, errno.EROFS)
        assert w.copy_sha(n1, v) == frozen
    finally:
        os.close(writer)
    # kubelet retrying NodeStage on the sealed mount: refused, never staged anew
    with pytest.raises(grpc.RpcError) as again:
        w.csi["n1"].node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=v.handle, staging_target_path=str(target),
            volume_capability=mount_cap("xfs"), volume_context=v.context))
    assert again.value.code() == C.FAILED_PRECONDITION, again.value

    # the pod is gone at last: the fenced copy unstages and is resynced as a replica
    w.cluster.link_up(n1)
    if learns_by == "demote":
        fenced.api.start()
    set_ready(w.kube, "n1", True)
    # (a shut-down filesystem still unmounts; for a stale copy the kernel's shutdown
    # message is no failure to record: the copy is resynced before it serves)
    assert unstage_code(w, n1, v, target) == C.OK
    assert w.device(n1, v) is None and not os.path.ismount(target)
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica"
               and w.copy_sha(n1, v) == w.copy_sha(n2, v), "n1 resynced as a replica", 300)
    assert w.writable(v) == ["n2"]


def unstage_code(w: World, node: NetNode, v: Volume, target: Path) -> grpc.StatusCode:
    try:
        w.csi[node.name].node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=v.handle, staging_target_path=str(target)))
    except grpc.RpcError as exc:
        return exc.code()
    return C.OK
