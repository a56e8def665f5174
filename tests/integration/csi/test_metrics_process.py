"""`statehold csi --metrics-address` as a process: its /metrics, scraped over HTTP, counts a
call the driver answered with an error under that error's code."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from tests.fixtures.metrics import Samples, scrape, value
from tests.integration.csi.test_process import STATEHOLD, serving, wait_for

pytestmark = [pytest.mark.root]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def driver_process(engine_home: Path) -> Iterator[tuple[Path, str]]:
    sock = engine_home / "run" / "csi.sock"
    port = free_port()
    argv = [STATEHOLD, "csi", "--endpoint", f"unix://{sock}", "--node-id", "n1", "--mode", "all",
            "--home", str(engine_home), "--allowed-root", str(engine_home / "kubelet"),
            "--grace", "2", "--metrics-address", f"127.0.0.1:{port}"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: serving(sock))
        yield sock, f"http://127.0.0.1:{port}/metrics"
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:  # our own process, by pid
            p.kill()
            p.wait(10)


def answered(url: str, out: list[Samples]) -> bool:
    try:
        out.append(scrape(url))
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def test_a_failed_csi_call_is_counted_with_its_code_on_the_process_metrics(
        driver_process: tuple[Path, str]) -> None:
    sock, url = driver_process
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        rpc.IdentityStub(ch).GetPluginInfo(pb.GetPluginInfoRequest())  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as bad:
            rpc.ControllerStub(ch).DeleteVolume(  # type: ignore[no-untyped-call]
                pb.DeleteVolumeRequest(volume_id=""))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got: list[Samples] = []
    wait_for(lambda: answered(url, got))  # the HTTP server starts just after the socket
    assert value(got[-1], "statehold_csi_calls_total", method="DeleteVolume", code="INVALID_ARGUMENT") == 1
    assert value(got[-1], "statehold_csi_calls_total", method="GetPluginInfo", code="OK") == 1
