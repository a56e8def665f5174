"""`statehold csi` as a process: socket hygiene, modes, graceful shutdown on signals."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from tests.integration.csi.harness import code_of

pytestmark = [pytest.mark.root]

STATEHOLD = str(Path(sys.executable).parent / "statehold")


def wait_for(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def start(home: Path, sock: Path, mode: str = "all") -> subprocess.Popen[bytes]:
    argv = [STATEHOLD, "csi", "--endpoint", f"unix://{sock}", "--node-id", "n1", "--mode", mode]
    argv += ["--home", str(home), "--allowed-root", str(home / "kubelet"), "--grace", "2"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def proc_env(engine_home: Path) -> Iterator[tuple[Path, Path, list[subprocess.Popen[bytes]]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield engine_home, engine_home / "run" / "csi.sock", procs
    finally:
        for p in procs:  # our own processes, by pid
            if p.poll() is None:
                p.kill()
                p.wait(10)


def serving(sock: Path) -> bool:
    if not sock.exists():
        return False
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        try:
            rpc.IdentityStub(ch).Probe(pb.ProbeRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_with_private_socket_and_stops_cleanly_on_signal(proc_env, sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    home, sock, procs = proc_env
    p = start(home, sock)
    procs.append(p)
    wait_for(lambda: serving(sock))
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        assert rpc.IdentityStub(ch).GetPluginInfo(pb.GetPluginInfoRequest()).name == "csi.statehold.io"
    p.send_signal(sig)
    assert p.wait(20) == 0
    assert not sock.exists()


def test_stale_socket_is_replaced_and_live_one_is_not_stolen(proc_env) -> None:  # type: ignore[no-untyped-def]
    home, sock, procs = proc_env
    sock.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # bound, never listening, then abandoned: what a crash leaves
    stale.close()
    first = start(home, sock)
    procs.append(first)
    wait_for(lambda: serving(sock))
    second = start(home, sock)
    procs.append(second)
    assert second.wait(30) == 5  # FailedPrecondition: another process serves there
    assert serving(sock)  # the first server still owns it
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0


def test_a_regular_file_at_the_socket_path_is_refused(proc_env) -> None:  # type: ignore[no-untyped-def]
    home, sock, procs = proc_env
    sock.parent.mkdir(parents=True)
    sock.write_text("precious")
    p = start(home, sock)
    procs.append(p)
    assert p.wait(30) == 5  # FailedPrecondition: not a socket, left alone
    assert sock.read_text() == "precious"


@pytest.mark.parametrize(("mode", "missing"), [("node", "controller"), ("controller", "node")])
def test_modes_serve_only_their_services(proc_env, mode: str, missing: str) -> None:  # type: ignore[no-untyped-def]
    home, sock, procs = proc_env
    p = start(home, sock, mode)
    procs.append(p)
    wait_for(lambda: serving(sock))
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        ctl = rpc.ControllerStub(ch).ControllerGetCapabilities
        node = rpc.NodeStub(ch).NodeGetCapabilities
        if missing == "controller":
            assert code_of(ctl, pb.ControllerGetCapabilitiesRequest()) == grpc.StatusCode.UNIMPLEMENTED
            assert code_of(node, pb.NodeGetCapabilitiesRequest()) == grpc.StatusCode.OK
        else:
            assert code_of(node, pb.NodeGetCapabilitiesRequest()) == grpc.StatusCode.UNIMPLEMENTED
            assert code_of(ctl, pb.ControllerGetCapabilitiesRequest()) == grpc.StatusCode.OK
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0


def test_bad_mode_and_endpoint_exit_non_zero(proc_env) -> None:  # type: ignore[no-untyped-def]
    home, sock, _ = proc_env
    bad_mode = subprocess.run(
        [
            STATEHOLD,
            "csi",
            "--endpoint",
            f"unix://{sock}",
            "--node-id",
            "n1",
            "--mode",
            "both",
            "--home",
            str(home),
        ],
        capture_output=True,
        timeout=60,
    )
    assert bad_mode.returncode == 2
    bad_ep = subprocess.run(
        [STATEHOLD, "csi", "--endpoint", "tcp://127.0.0.1:9", "--node-id", "n1", "--home", str(home)],
        capture_output=True,
        timeout=60,
    )
    assert bad_ep.returncode == 2 and b"unix" in bad_ep.stderr  # InvalidArgument


def test_endpoint_from_csi_endpoint_environment(proc_env) -> None:  # type: ignore[no-untyped-def]
    home, sock, procs = proc_env
    argv = [STATEHOLD, "csi", "--node-id", "n1", "--home", str(home)]
    p = subprocess.Popen(argv, env={**os.environ, "CSI_ENDPOINT": f"unix://{sock}"}, stderr=subprocess.PIPE)
    procs.append(p)  # type: ignore[arg-type]
    wait_for(lambda: serving(sock))
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
