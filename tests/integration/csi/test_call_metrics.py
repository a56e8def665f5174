"""CSI call metrics: real servicers behind the metrics interceptor on a unix socket, the
registry scraped over HTTP after known calls."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from statehold.csi.backend import BackendConfig
from statehold.csi.backend_local import LocalBackend
from statehold.csi.conditions import Conditions
from statehold.csi.controller import ControllerServicer
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.identity import IdentityServicer
from statehold.csi.metrics import ConditionCollector, CsiMetrics, method_name
from statehold.csi.router import Router
from statehold.csi.status import VolumeLocks
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.fixtures.metrics import scrape, served, value
from tests.integration.csi.harness import Driver


@pytest.fixture
def channel(node: Node, tmp_path: Path) -> Iterator[tuple[grpc.Channel, CsiMetrics]]:
    metrics = CsiMetrics()
    local = LocalBackend(BackendConfig(home=node.home, node_id="n1", allowed_roots=(tmp_path,)),
                         node=node)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[metrics.interceptor()])
    rpc.add_IdentityServicer_to_server(IdentityServicer(health=lambda: ""), server)  # type: ignore[no-untyped-call]
    rpc.add_ControllerServicer_to_server(  # type: ignore[no-untyped-call]
        ControllerServicer(Router(local, None), VolumeLocks()), server)
    sock = tmp_path / "csi.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    ch = grpc.insecure_channel(f"unix://{sock}")
    try:
        yield ch, metrics
    finally:
        ch.close()
        server.stop(0).wait()


def test_a_failed_call_is_counted_with_its_code(channel: tuple[grpc.Channel, CsiMetrics]) -> None:
    ch, metrics = channel
    controller = rpc.ControllerStub(ch)  # type: ignore[no-untyped-call]
    identity = rpc.IdentityStub(ch)  # type: ignore[no-untyped-call]
    identity.GetPluginInfo(pb.GetPluginInfoRequest())
    with pytest.raises(grpc.RpcError) as bad:
        controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=""))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with served(metrics.registry) as url:
        before = scrape(url)
        with pytest.raises(grpc.RpcError) as missing:
            controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
                volume_id="nopool/novolume", volume_capabilities=[pb.VolumeCapability(
                    block=pb.VolumeCapability.BlockVolume(),
                    access_mode=pb.VolumeCapability.AccessMode(
                        mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))]))
        after = scrape(url)
    code = missing.value.code().name
    assert value(before, "statehold_csi_calls_total", method="ValidateVolumeCapabilities", code=code) is None
    assert value(after, "statehold_csi_calls_total", method="ValidateVolumeCapabilities", code=code) == 1
    assert value(after, "statehold_csi_calls_total", method="DeleteVolume", code="INVALID_ARGUMENT") == 1
    assert value(after, "statehold_csi_calls_total", method="GetPluginInfo", code="OK") == 1
    assert value(after, "statehold_csi_call_seconds_count", method="DeleteVolume") == 1


def test_method_names_drop_the_service() -> None:
    assert method_name("/csi.v1.Controller/CreateVolume") == "CreateVolume"


@pytest.mark.root
def test_a_volume_whose_filesystem_failed_is_abnormal_in_the_metrics(node: Node, pool: Pool) -> None:
    sick = pool.create_volume("sick", 64 * 1024 * 1024)
    well = pool.create_volume("well", 64 * 1024 * 1024)
    Conditions(node.home).put(sick, "xfs: metadata I/O error", "/staging/sick")
    registry = CollectorRegistry()
    registry.register(ConditionCollector(node.pools, node.home))
    with served(registry) as url:
        got = scrape(url)
    assert value(got, "statehold_volume_condition_abnormal", volume=sick.id) == 1
    assert value(got, "statehold_volume_condition_abnormal", volume=well.id) == 0
    assert value(got, "statehold_pool_volumes_abnormal", pool=pool.name) == 1
    quiet = CollectorRegistry()
    quiet.register(ConditionCollector(node.pools, node.home, per_volume=False))
    with served(quiet) as url:
        got = scrape(url)
    assert value(got, "statehold_pool_volumes_abnormal", pool=pool.name) == 1
    assert value(got, "statehold_volume_condition_abnormal", volume=sick.id) is None


@pytest.mark.root
def test_the_driver_counts_its_calls_through_the_real_socket(driver: Driver) -> None:
    with pytest.raises(grpc.RpcError) as bad:
        driver.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="test/none",
                                                                  staging_target_path=""))
    with served(driver.server.metrics.registry) as url:
        got = scrape(url)
    assert value(got, "statehold_csi_calls_total", method="NodeUnstageVolume",
                 code=bad.value.code().name) == 1
