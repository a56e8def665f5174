"""NodeStageVolume of a replicated volume on the real socket, over a real pool, with the
cluster's record read through the Kube facade (in memory, and the official client over
HTTP): only the copy the record makes the writable primary is staged; a volume not yet
recorded, a copy not yet promoted, a primary moving away, a replica while the primary is
up, and an old primary (fenced durably, replication.md §6.3) are FAILED_PRECONDITION and
nothing is attached; a copy in a pool named otherwise than the handle's is found; without
a cluster (standalone) a replicated volume stages as before."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.kube.facade import Kube
from statehold.kube.kinds import NODE, REPLICATED_VOLUME
from statehold.kube.memory import MemoryKube
from statehold.replication import roles
from statehold.replication.state import CopyState, Role, StateStore
from tests.fixtures.engine import release_home
from tests.integration.csi.harness import NODE_ID, MiB, block_cap, code_of

pytestmark = [pytest.mark.root]

C = grpc.StatusCode


class Driver:
    def __init__(self, server: CsiServer, channel: grpc.Channel, kubelet: Path) -> None:
        self.server, self.kubelet = server, kubelet
        self.controller = rpc.ControllerStub(channel)
        self.node = rpc.NodeStub(channel)

    def stage_req(self, volume_id: str, context: dict[str, str], tag: str = "s") -> pb.NodeStageVolumeRequest:
        staging = self.kubelet / "plugins" / "staging" / tag
        staging.mkdir(parents=True, exist_ok=True)
        return pb.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging),
                                         volume_capability=block_cap(), volume_context=context)

    def unstage(self, volume_id: str, tag: str = "s") -> None:
        staging = self.kubelet / "plugins" / "staging" / tag
        self.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging)))


@contextlib.contextmanager
def driver_with(node: Node, kube: Kube | None) -> Iterator[Driver]:
    kubelet = Path(f"{node.home}-kubelet")
    kubelet.mkdir(parents=True, exist_ok=True)
    sock = node.home / "csi" / "csi.sock"
    cfg = ServerConfig(endpoint=f"unix://{sock}", node_id=NODE_ID, mode="all", home=node.home,
                       allowed_roots=(kubelet,), grace=2.0)
    server = CsiServer(cfg, local=LocalBackend(cfg.backend_config(), node=node),
                       with_shared=False, kube=kube)
    server.start()
    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield Driver(server, channel, kubelet)
    finally:
        channel.close()
        server.stop(0)
        release_home(kubelet)


@pytest.fixture(params=["memory", "http"])
def kube(request: pytest.FixtureRequest) -> Iterator[tuple[MemoryKube, Kube]]:
    """(the store the test writes, the facade the driver reads through)."""
    store = MemoryKube()
    for name, ready in ((NODE_ID, True), ("node-b", True)):
        store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
        store.patch_status(NODE, name, {"conditions": [
            {"type": "Ready", "status": "True" if ready else "Unknown"}]})
    if request.param == "memory":
        yield store, store
        return
    import kubernetes

    from statehold.kube.client import ApiKube
    from tests.unit.kube.apiserver import serve

    with serve(store) as url:
        cfg = kubernetes.client.Configuration()
        cfg.host = url
        yield store, ApiKube(kubernetes.client.ApiClient(cfg), request_timeout=10)


def create(d: Driver, name: str = "pvc-r") -> pb.Volume:
    return d.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[block_cap()], parameters={"replicas": "2"},
        capacity_range=pb.CapacityRange(required_bytes=64 * MiB))).volume


def record(store: MemoryKube, handle: str, **status: Any) -> None:
    """Create or rewrite the volume's record (status written whole)."""
    name = handle.replace("/", "-")
    try:
        rv = store.get(REPLICATED_VOLUME, name)
    except Exception:
        rv = store.create({"apiVersion": REPLICATED_VOLUME.api_version, "kind": "ReplicatedVolume",
                           "metadata": {"name": name},
                           "spec": {"volumeHandle": handle, "replicas": 2, "size": 64 * MiB}})
    store.replace_status({**rv, "status": status})


def attached(pool: Pool, name: str) -> bool:
    return pool.get_volume(name).device is not None


def state_of(pool: Pool, name: str) -> dict[str, Any]:
    return json.loads((pool.meta_dir / "replication" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_only_the_recorded_writable_primary_stages(node: Node, pool: Pool,
                                                   kube: tuple[MemoryKube, Kube]) -> None:
    store, facade = kube
    with driver_with(node, facade) as d:
        vol = create(d)
        name = vol.volume_id.split("/")[1]
        req = d.stage_req(vol.volume_id, dict(vol.volume_context))
        assert code_of(d.node.NodeStageVolume, req) == C.FAILED_PRECONDITION  # no record yet
        record(store, vol.volume_id, epoch=1, primary=NODE_ID)
        # recorded, but the operator has not promoted the copy yet
        assert code_of(d.node.NodeStageVolume, req) == C.FAILED_PRECONDITION
        assert not attached(pool, name)
        roles.promote(pool, name, 1)
        d.node.NodeStageVolume(req)
        assert attached(pool, name)
        d.node.NodeStageVolume(req)  # a retry while nothing changed: still fine
        # a planned move away begins: a retried stage here is refused from now on
        record(store, vol.volume_id, epoch=1, primary=NODE_ID, moving={"to": "node-b", "epoch": 1})
        assert code_of(d.node.NodeStageVolume, req) == C.FAILED_PRECONDITION
        d.unstage(vol.volume_id)
        assert not attached(pool, name)
        assert state_of(pool, name)["role"] == "primary"  # refused, not fenced: same epoch


def test_an_old_primary_is_fenced_durably_and_never_staged(node: Node, pool: Pool,
                                                           kube: tuple[MemoryKube, Kube]) -> None:
    store, facade = kube
    with driver_with(node, facade) as d:
        vol = create(d)
        name = vol.volume_id.split("/")[1]
        roles.promote(pool, name, 1)
        # failover while this node was away: epoch 2 belongs to node-b
        record(store, vol.volume_id, epoch=2, primary="node-b",
               copies=[{"node": NODE_ID, "role": "primary", "pool": pool.name},
                       {"node": "node-b", "role": "primary", "point": "e1-3"}])
        req = d.stage_req(vol.volume_id, dict(vol.volume_context))
        with pytest.raises(grpc.RpcError) as refused:
            d.node.NodeStageVolume(req)
        assert refused.value.code() == C.FAILED_PRECONDITION
        assert not attached(pool, name)
        state = state_of(pool, name)
        assert (state["role"], state["epoch"]) == ("stale", 2)  # persisted: it stays refused
        assert code_of(d.node.NodeStageVolume, req) == C.FAILED_PRECONDITION


def test_a_replica_is_not_staged_while_the_primary_serves(node: Node, pool: Pool,
                                                          kube: tuple[MemoryKube, Kube]) -> None:
    store, facade = kube
    with driver_with(node, facade) as d:
        vol = create(d)
        name = vol.volume_id.split("/")[1]
        # this node's copy is a replica of node-b's primary (its state as the core keeps it)
        StateStore(pool.meta_dir).save(CopyState(name), role=Role.REPLICA, epoch=2, point="e2-1")
        record(store, vol.volume_id, epoch=2, primary="node-b",
               copies=[{"node": NODE_ID, "role": "replica", "point": "e2-1", "pool": pool.name},
                       {"node": "node-b", "role": "primary"}])
        assert code_of(d.node.NodeStageVolume, d.stage_req(vol.volume_id, dict(vol.volume_context))) \
            == C.FAILED_PRECONDITION
        assert not attached(pool, name)
        assert (state_of(pool, name)["role"], state_of(pool, name)["epoch"]) == ("replica", 2)


def test_a_copy_in_a_pool_named_otherwise_is_found_and_staged(node: Node, pool: Pool,
                                                              kube: tuple[MemoryKube, Kube]) -> None:
    store, facade = kube
    with driver_with(node, facade) as d:
        vol = create(d)
        name = vol.volume_id.split("/")[1]
        roles.promote(pool, name, 3)
        handle = f"pool-of-node-a/{name}"  # the handle names the creating node's pool
        record(store, handle, epoch=3, primary=NODE_ID)
        context = dict(vol.volume_context)
        d.node.NodeStageVolume(d.stage_req(handle, context))
        assert attached(pool, name)
        d.unstage(handle)
        assert not attached(pool, name)


def test_standalone_stages_a_replicated_volume_as_before(node: Node, pool: Pool) -> None:
    with driver_with(node, None) as d:
        vol = create(d)
        name = vol.volume_id.split("/")[1]
        d.node.NodeStageVolume(d.stage_req(vol.volume_id, dict(vol.volume_context)))
        assert attached(pool, name)
        d.unstage(vol.volume_id)


def test_a_single_copy_volume_never_reads_the_cluster(node: Node, pool: Pool,
                                                      kube: tuple[MemoryKube, Kube]) -> None:
    _store, facade = kube
    with driver_with(node, facade) as d:
        vol = d.controller.CreateVolume(pb.CreateVolumeRequest(
            name="pvc-one", volume_capabilities=[block_cap()],
            capacity_range=pb.CapacityRange(required_bytes=64 * MiB))).volume
        d.node.NodeStageVolume(d.stage_req(vol.volume_id, dict(vol.volume_context)))
        assert attached(pool, vol.volume_id.split("/")[1])
        d.unstage(vol.volume_id)
