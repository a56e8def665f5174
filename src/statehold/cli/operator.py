"""``statehold operator run|crds``: the operator process, and the CRDs it serves.

``run --role node`` is the per-node agent (DaemonSet); ``run --role cluster`` is the
cluster operator (Deployment), optionally behind a Lease (``--leader-election``): it waits
for the lease, renews it every third of its duration, and stops (exit 3) when renewal
fails, so the Deployment restarts it as a follower rather than having two leaders.
"""

from __future__ import annotations

import signal
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import typer
import yaml

from statehold.cli.context import home_dir
from statehold.cli.output import failures
from statehold.controller.crds import all_crds
from statehold.controller.leader import LeaderElector
from statehold.errors import InvalidArgument, StateholdError

operator_app = typer.Typer(help="The Kubernetes operator (kopf) for Statehold's custom resources.",
                           no_args_is_help=True)
ROLES = ("node", "cluster")
LOST_LEADERSHIP = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_role(role: str, node_name: str | None) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"--role must be node or cluster, not {role!r}")
    if role == "node" and not node_name:
        raise InvalidArgument("--role node needs --node-name (the Kubernetes node this agent runs on)")


@operator_app.command("crds")
def crds() -> None:
    """Print the CustomResourceDefinitions as YAML (kubectl apply -f -)."""
    typer.echo("---\n".join(yaml.safe_dump(c, sort_keys=False) for c in all_crds()).rstrip())


@operator_app.command("run")
def run(ctx: typer.Context,
        role: str = typer.Option("cluster", "--role", help="node | cluster"),
        node_name: str | None = typer.Option(None, "--node-name", help="This node (role node)."),
        home: Path | None = typer.Option(None, "--home", help="Statehold home (role node)."),
        kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Default: in-cluster."),
        leader_election: bool = typer.Option(False, "--leader-election/--no-leader-election"),
        lease_namespace: str = typer.Option("statehold-system", "--lease-namespace"),
        lease_name: str = typer.Option("statehold-operator", "--lease-name"),
        identity: str | None = typer.Option(None, "--identity", help="Default: the hostname."),
        lease_seconds: int = typer.Option(15, "--lease-seconds", min=5)) -> None:
    """Run the operator until SIGTERM."""
    stop = threading.Event()
    lost = threading.Event()
    with failures():
        check_role(role, node_name)
        from statehold.controller import operator as op  # loads kopf: only for this command
        from statehold.kube.client import ApiKube  # kopf logs in with the client's configuration
        from statehold.kube.kopf_runtime import login_like

        kube = ApiKube.connect(kubeconfig)
        engine: Any = None
        if role == "node":
            from statehold.engine.node import Node

            assert node_name is not None  # check_role refused a node role without it
            engine = Node(home_dir(ctx, home, create=True))
            registry = op.node_registry(kube, engine, node_name)
            tickers = op.node_tickers(kube, engine, node_name)
        else:
            registry = op.cluster_registry(kube)
            tickers = op.cluster_tickers(kube)
        settings = op.settings_for(role, node_name)
        login_like(registry, kube.configuration)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    elector = None
    if leader_election:
        elector = LeaderElector(kube, lease_namespace, lease_name, identity or socket.gethostname(),
                                utcnow, duration=lease_seconds)
        typer.echo(f"waiting for lease {lease_namespace}/{lease_name}", err=True)
        while not stop.is_set() and not _round(elector):
            stop.wait(max(1.0, lease_seconds / 3))

        def _renew() -> None:
            while not stop.wait(lease_seconds / 3):
                if not _round(elector):
                    lost.set()
                    stop.set()

        threading.Thread(target=_renew, name="lease-renewal", daemon=True).start()
    try:
        if not stop.is_set():
            typer.echo(f"statehold operator running role={role}", err=True)
            op.run(registry, settings, stop, tickers)
    finally:
        if elector is not None and not lost.is_set():
            elector.release()
        if engine is not None:
            engine.close()
    if lost.is_set():
        typer.echo("error: lost the leader lease; exiting", err=True)
        raise typer.Exit(LOST_LEADERSHIP)


def _round(elector: LeaderElector) -> bool:
    try:
        return elector.try_acquire()
    except StateholdError:  # API unreachable: not leader this round
        return False


def register(app: typer.Typer) -> None:
    """Add ``statehold operator ...`` to app."""
    app.add_typer(operator_app, name="operator")
