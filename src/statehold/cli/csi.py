"""CLI: ``statehold csi`` runs the CSI driver on a unix socket until SIGTERM/SIGINT.

With ``--agent-socket`` (and ``--cluster``), a group snapshot whose members live on several
nodes is coordinated by this node's agent, asked over that node-local Unix socket
(``statehold.agent.localsock``): the plugin holds no agent certificate. The plugin reads
which node holds each pool (StoragePools' ``spec.node``) and where each node's agent
listens (the Node's InternalIP and ``--agent-port``), as the operator does.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from statehold.cli.context import home_dir, settings
from statehold.cli.output import failures
from statehold.errors import InvalidArgument

DEFAULT_ROOTS = (Path("/var/lib/kubelet"),)


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("csi")
    def csi(
        ctx: typer.Context,
        endpoint: str = typer.Option(
            ..., envvar="CSI_ENDPOINT", help="unix:///path/csi.sock (the spec's CSI_ENDPOINT works too)"
        ),
        node_id: str = typer.Option(..., "--node-id", help="this node's CSI node id (topology value)"),
        mode: str = typer.Option("all", help="controller | node | all"),
        home: Path | None = typer.Option(None, help="Statehold home (default: STATEHOLD_HOME or .statehold)"),
        allowed_root: list[Path] = typer.Option(
            [], "--allowed-root", help="directory under which staging/target paths may lie (repeatable; also "
            "STATEHOLD_CSI_ALLOWED_ROOTS=a:b; /var/lib/kubelet always is one)"
        ),
        max_volumes: int = typer.Option(256, help="max_volumes_per_node reported by NodeGetInfo"),
        grace: float = typer.Option(10.0, help="seconds in-flight calls get on shutdown"),
        cluster: bool = typer.Option(
            False, "--cluster/--standalone",
            help="read replicated volumes' records from the Kubernetes API at NodeStage (in-cluster "
            "credentials, or --kubeconfig): a copy stages only where the record makes it the "
            "writable primary; standalone reads nothing"),
        kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="with --cluster"),
        metrics_address: str = typer.Option(
            "", "--metrics-address", help="IP:PORT for Prometheus metrics of the CSI calls "
            "(docs/metrics.md); empty: off"),
        agent_socket: Path | None = typer.Option(
            None, "--agent-socket", help="this node's agent's local socket (`statehold agent "
            "serve --local-socket`): group snapshots across nodes are coordinated by that agent; "
            "needs --cluster. Without it such groups are refused (FAILED_PRECONDITION)"),
        agent_port: int = typer.Option(
            7443, "--agent-port", min=1, max=65535,
            help="with --agent-socket: the port every node's agent listens on (at its Node's "
            "InternalIP)"),
    ) -> None:
        """Serve the CSI Identity, Controller and/or Node services (driver csi.statehold.io)."""
        from statehold.csi.server import MODES, CsiServer, ServerConfig

        with failures():  # e.g. a home this user cannot create
            if mode not in MODES:
                raise InvalidArgument(f"--mode must be one of {', '.join(MODES)}")
            extra = settings(ctx).csi_allowed_roots
            roots = tuple(dict.fromkeys(p.absolute() for p in (*DEFAULT_ROOTS, *allowed_root, *extra)))
            config = ServerConfig(
                endpoint=endpoint, node_id=node_id, mode=mode,  # checked above
                home=home_dir(ctx, home, create=True), allowed_roots=roots,
                max_volumes=max_volumes, grace=grace,
            )
            if agent_socket is not None and not cluster:
                raise InvalidArgument("--agent-socket needs --cluster: the nodes of the pools and "
                                      "the agents' addresses are read from the cluster")
            kube = None
            if cluster:
                from statehold.kube.client import ApiKube

                kube = ApiKube.connect(kubeconfig)
            across: Any = None
            pool_nodes: Any = None
            if agent_socket is not None and kube is not None:
                from statehold.agent.localsock import LocalGroupsClient
                from statehold.controller.agent_directory import KubeDirectory
                from statehold.csi.remote_groups import KubePoolNodes

                across = LocalGroupsClient(agent_socket.absolute(), node_id,
                                           KubeDirectory(kube, agent_port))
                pool_nodes = KubePoolNodes(kube)
            server = CsiServer(config, kube=kube, across=across, pool_nodes=pool_nodes)
            server.start()
            if metrics_address:
                from statehold.controller.metrics import serve

                serve(metrics_address, server.metrics.registry)  # a daemon thread, ends with us

        def _shutdown(signum: int, _frame: FrameType | None) -> None:
            # grpc's stop() must not run inside the signal handler's frame while the main
            # thread sits in wait(); a helper thread does it and wait() returns.
            import threading

            threading.Thread(target=server.stop, name="csi-shutdown", daemon=True).start()

        signal.signal(signal.SIGTERM, _shutdown)
        signal.signal(signal.SIGINT, _shutdown)
        print(f"serving {endpoint}", file=sys.stderr, flush=True)
        while not server.wait(1.0):
            pass
