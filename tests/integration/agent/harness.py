"""Agents on the nodes of a :class:`~tests.fixtures.netns.Cluster`: certificates from one
cluster CA, ``statehold agent serve`` per node (real TCP, mutual TLS), the agent CLI as the
client (run inside a node's namespace: the host has no route to the nodes), pause points,
and the bytes of volumes and point snapshots by checksum."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statehold.replication.points import snapshot_name
from tests.fixtures.netns import STATEHOLD, Cluster, NetNode, wait_for

PORT = 7443
VOLUME = "db"
CONTROLLER_COMMANDS = frozenset({"promote", "demote", "sync", "replicas", "release"})
"""Agent commands only a controller certificate may call (agent/auth.py)."""
MiB = 1024 * 1024


@dataclass
class Agents:
    cluster: Cluster
    ca_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.cluster.nodes:
            subprocess.run([STATEHOLD, "agent", "certs", "--out", str(self.certs(node)),
                            "--ca-dir", str(self.ca_dir), "--node", node.name, "--ip", node.ip],
                           check=True, capture_output=True, timeout=60)
            self.pause_dir(node).mkdir()
        subprocess.run([STATEHOLD, "agent", "certs", "--out", str(self.controller_certs),
                        "--ca-dir", str(self.ca_dir), "--node", "statehold-test-operator",
                        "--role", "controller"], check=True, capture_output=True, timeout=60)

    # -- places --------------------------------------------------------------------------
    def certs(self, node: NetNode) -> Path:
        return node.home.parent / "certs"

    @property
    def controller_certs(self) -> Path:
        """A controller certificate (the operator's role), for the calls only it may make."""
        return self.ca_dir.parent / "controller-certs"

    def pause_dir(self, node: NetNode) -> Path:
        return node.home.parent / "pause"

    def address(self, node: NetNode) -> str:
        return f"{node.ip}:{PORT}"

    def volume_file(self, node: NetNode, volume: str = VOLUME) -> Path:
        return node.home / "pools" / node.pool / "volumes" / f"{volume}.img"

    def point_file(self, node: NetNode, point: str, volume: str = VOLUME) -> Path:
        return node.home / "pools" / node.pool / "snapshots" / f"{snapshot_name(volume, point)}.img"

    # -- processes -----------------------------------------------------------------------
    def start(self, node: NetNode, *, replicas: Sequence[NetNode] = (), interval: float = 0,
              checkpoint: str = "") -> subprocess.Popen[bytes]:
        argv = [STATEHOLD, "agent", "serve", "--listen", self.address(node), "--certs",
                str(self.certs(node)), "--home", str(node.home), "--node-name", node.name,
                "--interval", str(interval), "--pause-dir", str(self.pause_dir(node)), "--grace", "0"]
        if replicas:
            peers = ",".join(f"{r.name}@{self.address(r)}" for r in replicas)
            argv += ["--replica", f"{node.pool}/{VOLUME}={peers}"]
        if checkpoint:
            argv += ["--checkpoint", checkpoint]
        proc = self.cluster.spawn(node, argv, env={"STATEHOLD_LOG_LEVEL": "INFO"},
                                  log=node.home.parent / "agent.log")
        self.procs[node.name] = proc
        wait_for(lambda: self.ask(node, "ping", check=False)[0] == 0, 60, f"agent on {node.name}")
        return proc

    def kill(self, node: NetNode) -> None:
        """SIGKILL the node's agent (by its pid)."""
        self.cluster.kill(self.procs.pop(node.name))

    def log(self, node: NetNode) -> str:
        path = node.home.parent / "agent.log"
        return path.read_text()[-4000:] if path.exists() else ""

    # -- the agent CLI, from inside a node's namespace -------------------------------------
    def ask(self, node: NetNode, *args: str, target: NetNode | None = None,
            check: bool = True, timeout: float = 120) -> tuple[int, Any]:
        """``statehold agent <args>`` run on ``node`` against ``target``'s agent (default: its
        own); (exit code, parsed JSON stdout or the raw text)."""
        target = target or node
        certs = self.controller_certs if args and args[0] in CONTROLLER_COMMANDS else self.certs(node)
        argv = [STATEHOLD, "agent", *args, "--address", self.address(target), "--certs", str(certs)]
        try:
            done = self.cluster.run(node, argv, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {' '.join(args)} on {node.name} -> {target.name}: no answer in "
                                 f"{timeout} s\n--- agent log of {node.name}:\n{self.log(node)}\n"
                                 f"--- agent log of {target.name}:\n{self.log(target)}") from None
        if check and done.returncode != 0:
            raise AssertionError(f"agent {' '.join(args)} on {node.name} -> {target.name}: exit "
                                 f"{done.returncode}: {done.stderr[-2000:]}\n{done.stdout[-2000:]}\n"
                                 f"--- agent log of {target.name}:\n{self.log(target)}")
        try:
            return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            return done.returncode, done.stdout

    def status(self, node: NetNode, volume: str = VOLUME) -> dict[str, Any]:
        return self.ask(node, "status", f"{node.pool}/{volume}")[1]  # type: ignore[no-any-return]

    def sync(self, node: NetNode, volume: str = VOLUME) -> dict[str, dict[str, Any]]:
        """Sync the primary on ``node`` to every replica; each must succeed."""
        _code, reply = self.ask(node, "sync", f"{node.pool}/{volume}")
        return {r["node"]: r for r in reply["replicas"]}

    def try_sync(self, node: NetNode, volume: str = VOLUME) -> bool:
        code, _ = self.ask(node, "sync", f"{node.pool}/{volume}", check=False)
        return code == 0

    def spawn_sync(self, node: NetNode, volume: str = VOLUME) -> subprocess.Popen[bytes]:
        """A sync running in the background (a process of its own, tracked by pid)."""
        argv = [STATEHOLD, "agent", "sync", f"{node.pool}/{volume}", "--address", self.address(node),
                "--certs", str(self.controller_certs)]
        return self.cluster.spawn(node, argv)

    # -- pause points ----------------------------------------------------------------------
    def arm(self, node: NetNode, point: str) -> None:
        (self.pause_dir(node) / f"{point}.wait").touch()

    def wait_reached(self, node: NetNode, point: str, timeout: float = 120) -> None:
        reached = self.pause_dir(node) / f"{point}.reached"
        wait_for(reached.exists, timeout, f"{node.name} reaching pause point {point}")
        reached.unlink()

    def release(self, node: NetNode, point: str) -> None:
        (self.pause_dir(node) / f"{point}.go").touch()

    def disarm(self, node: NetNode, point: str) -> None:
        """After the paused agent was killed: its restart must not stop there again."""
        (self.pause_dir(node) / f"{point}.wait").unlink(missing_ok=True)


# -- data --------------------------------------------------------------------------------------
def create_volume(cluster: Cluster, node: NetNode, size: str = "256Mi", volume: str = VOLUME) -> None:
    cluster.statehold(node, "volume", "create", volume, "--size", size, "--mode", "block",
                      "--home", str(node.home))


def scribble(path: Path, mib: int, seed: int) -> None:
    """Write ``mib`` MiB of random bytes at random MiB-aligned offsets of ``path`` (sparse
    random: some chunks land on others, the rest of the file keeps its holes), fsynced."""
    rng = random.Random(seed)
    slots = path.stat().st_size // MiB
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(mib):
            os.pwrite(fd, rng.randbytes(MiB), rng.randrange(slots) * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# -- agents that read the cluster's records (issue 12) -----------------------------------------
KUBE_PORT = 16443
"""Where a node's relay to the test's API server listens, on the node's own 127.0.0.1."""


def kube_relay(cluster: Cluster, node: NetNode, socket_file: Path) -> subprocess.Popen[bytes]:
    """In ``node``'s namespace, 127.0.0.1:KUBE_PORT forwarded to ``socket_file`` (which the
    test process serves, ``relay.UnixRelay``); returns once the port accepts."""
    root = str(Path(__file__).resolve().parents[3])
    proc = cluster.spawn(node, [sys.executable, "-m", "tests.integration.agent.relay",
                                str(KUBE_PORT), str(socket_file)],
                         env={"PYTHONPATH": root}, log=node.home.parent / "kube-relay.log")
    probe = [sys.executable, "-c", "import socket,sys; socket.create_connection(('127.0.0.1', "
             f"{KUBE_PORT}), 2).close()"]
    wait_for(lambda: cluster.run(node, probe, check=False).returncode == 0, 60,
             f"the API relay on {node.name}")
    return proc


def write_kubeconfig(path: Path, port: int = KUBE_PORT) -> Path:
    """A kubeconfig naming http://127.0.0.1:<port> (a node's relay) with a dummy token."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "relay",
        "clusters": [{"name": "relay", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "agent", "user": {"token": "t"}}],
        "contexts": [{"name": "relay", "context": {"cluster": "relay", "user": "agent"}}]}))
    return path


def start_cluster_agent(agents: Agents, node: NetNode, kubeconfig: Path, *,
                        interval: float = 1.0, record_interval: float = 1.0) -> subprocess.Popen[bytes]:
    """``statehold agent serve --cluster``: as :meth:`Agents.start`, reading the records
    through ``kubeconfig`` (at start, before serving, then every ``record_interval`` s)."""
    argv = [STATEHOLD, "agent", "serve", "--listen", agents.address(node), "--certs",
            str(agents.certs(node)), "--home", str(node.home), "--node-name", node.name,
            "--interval", str(interval), "--pause-dir", str(agents.pause_dir(node)), "--grace", "0",
            "--cluster", "--kubeconfig", str(kubeconfig),
            "--record-check-interval", str(record_interval)]
    proc = agents.cluster.spawn(node, argv, env={"STATEHOLD_LOG_LEVEL": "INFO"},
                                log=node.home.parent / "agent.log")
    agents.procs[node.name] = proc
    wait_for(lambda: agents.ask(node, "ping", check=False)[0] == 0, 60, f"agent on {node.name}")
    return proc


# -- the CSI node plugin beside its agent (issue 13: groups across nodes) ------------------------
def start_agent_with_local_socket(agents: Agents, node: NetNode,
                                  local_socket: Path) -> subprocess.Popen[bytes]:
    """As :meth:`Agents.start`, also serving the node's CSI plugin on ``local_socket`` (the
    chart's ``--local-socket``); returns once the agent answers and the socket exists."""
    argv = [STATEHOLD, "agent", "serve", "--listen", agents.address(node), "--certs",
            str(agents.certs(node)), "--home", str(node.home), "--node-name", node.name,
            "--interval", "0", "--pause-dir", str(agents.pause_dir(node)), "--grace", "0",
            "--local-socket", str(local_socket)]
    proc = agents.cluster.spawn(node, argv, env={"STATEHOLD_LOG_LEVEL": "INFO"},
                                log=node.home.parent / "agent.log")
    agents.procs[node.name] = proc
    wait_for(lambda: agents.ask(node, "ping", check=False)[0] == 0, 60, f"agent on {node.name}")
    wait_for(local_socket.is_socket, 30, f"the local socket of {node.name}'s agent")
    return proc


def start_csi_plugin(cluster: Cluster, node: NetNode, csi_socket: Path, *, kubeconfig: Path,
                     kubelet: Path, agent_socket: Path | None = None,
                     log: Path | None = None) -> subprocess.Popen[bytes]:
    """``statehold csi`` on ``node`` as the chart runs it in the node DaemonSet (``--mode=all
    --cluster``, and ``--agent-socket``/``--agent-port`` unless ``agent_socket`` is None),
    reading the cluster through ``kubeconfig``; returns once its CSI socket answers (the
    socket is a file: the test process reaches it across namespaces)."""
    import grpc

    from statehold.csi.gen import csi_pb2, csi_pb2_grpc

    argv = [STATEHOLD, "csi", f"--endpoint=unix://{csi_socket}", f"--node-id={node.name}",
            "--mode=all", f"--home={node.home}", "--cluster", f"--kubeconfig={kubeconfig}",
            f"--allowed-root={kubelet}"]
    if agent_socket is not None:
        argv += [f"--agent-socket={agent_socket}", f"--agent-port={PORT}"]
    proc = cluster.spawn(node, argv, env={"STATEHOLD_LOG_LEVEL": "INFO"},
                         log=log or node.home.parent / f"csi-{csi_socket.stem}.log")

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"statehold csi on {node.name} exited {proc.returncode}")
        if not csi_socket.is_socket():
            return False
        with grpc.insecure_channel(f"unix://{csi_socket}") as channel:
            try:
                csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(  # type: ignore[no-untyped-call]
                    csi_pb2.GetPluginInfoRequest(), timeout=5)
            except grpc.RpcError:
                return False
        return True

    wait_for(answers, 60, f"statehold csi on {node.name}")
    return proc
