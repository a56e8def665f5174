"""``statehold operator run|crds``: the operator process, and the CRDs it serves.

``run --role node`` is the per-node agent (DaemonSet); ``run --role cluster`` is the
cluster operator (Deployment), optionally behind a Lease (``--leader-election``): it waits
for the lease, renews it every third of its duration, and stops (exit 3) when renewal
fails, so the Deployment restarts it as a follower rather than having two leaders.

The cluster operator also runs replicated volumes (``--replication``, the default): it
makes sure the node agents' CA exists (Secret ``statehold-agent-ca`` in
``--agent-namespace``), issues itself a client certificate from it, and passes the
controller an ``AgentFleet`` that reaches each node's agent at its InternalIP and
``--agent-port``; a ticker keeps one certificate Secret per Node current
(``statehold.controller.agent_certs``). This is the one place that builds both the
controller and the agent side.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
import yaml

from statehold.cli.context import home_dir
from statehold.cli.output import failures
from statehold.controller.crds import all_crds
from statehold.controller.leader import LeaderElector
from statehold.errors import InvalidArgument, StateholdError

if TYPE_CHECKING:
    from statehold.agent.fleet import AgentFleet
    from statehold.controller.operator import Ticker
    from statehold.kube.facade import Kube

operator_app = typer.Typer(help="The Kubernetes operator (kopf) for Statehold's custom resources.",
                           no_args_is_help=True)
ROLES = ("node", "cluster")
LOST_LEADERSHIP = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def replication_wiring(kube: Kube, namespace: str, port: int,
                       interval: float = 60.0) -> tuple[AgentFleet, Ticker]:
    """The Agents port for the controller (an AgentFleet with the operator's certificate)
    and the ticker that keeps the node certificates (and the operator's own) current."""
    from statehold.agent import pki
    from statehold.agent.fleet import AgentFleet
    from statehold.controller import agent_certs
    from statehold.controller.agent_directory import KubeDirectory
    from statehold.controller.operator import Ticker

    issuer = pki.Issuer()
    ca = agent_certs.ensure_ca(kube, namespace, issuer)
    own = [agent_certs.issue_operator(ca, issuer)]

    def bundle() -> pki.Bundle:
        cert, key = own[0]
        return pki.Bundle(ca.cert, pki.KeyPair(cert, key))

    fleet = AgentFleet(bundle(), KubeDirectory(kube, port))

    def tick() -> None:
        now = utcnow()
        for line in agent_certs.ensure_node_certs(kube, namespace, ca, issuer, now):
            typer.echo(f"agent certificates: {line}", err=True)
        if agent_certs.due(own[0][0], (), issuer, now) is not None:
            own[0] = agent_certs.issue_operator(ca, issuer)
            fleet.renew(bundle())

    return fleet, Ticker("agent-certificates", interval, tick, immediate=True)


def _dashboard(kube: Any, address: str) -> Callable[[], None]:
    """The web dashboard beside the cluster operator: reads with the operator's identity,
    acts with the token a visitor signs in with (docs/dashboard.md)."""
    from statehold.cli.dashboard import loopback
    from statehold.dashboard.server import Dashboard, start

    host, port = loopback(address)
    return start(Dashboard.for_cluster(kube, as_user=kube.with_token), host, port)


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
        lease_seconds: int = typer.Option(15, "--lease-seconds", min=5),
        replication: bool = typer.Option(
            True, "--replication/--no-replication",
            help="Role cluster: run replicated volumes (the node agents' CA and certificates, "
            "records, failover, placement) through the node agents."),
        agent_namespace: str = typer.Option(
            "statehold-system", "--agent-namespace", envvar="POD_NAMESPACE",
            help="Namespace of the agents' CA and certificate Secrets, and of the node "
            "plugin's ServiceAccount (role cluster grants it Secrets and exec per namespace)."),
        agent_port: int = typer.Option(7443, "--agent-port", min=1, max=65535,
                                       help="TCP port of the node agents (on each Node's InternalIP)."),
        replication_interval: float = typer.Option(
            10.0, "--replication-interval", min=1.0,
            help="Seconds between two passes over every replicated volume."),
        move_on_cordon: bool = typer.Option(
            True, "--move-on-cordon/--no-move-on-cordon",
            help="Role cluster: a cordon or drain of a replicated volume's primary node moves "
            "the primary to its newest replica on a schedulable node (docs/replication.md)."),
        metrics_address: str = typer.Option(
            "", "--metrics-address", help="IP:PORT for Prometheus metrics (docs/metrics.md); "
            "empty: off."),
        metrics_per_volume: bool = typer.Option(
            True, "--metrics-per-volume/--no-metrics-per-volume",
            help="Export per-volume series (role cluster: newest successful backup per claim; role "
            "node: size, usage, I/O, snapshots, condition); off for thousands of volumes."),
        dashboard_address: str = typer.Option(
            "", "--dashboard-address", help="Role cluster: 127.0.0.1:PORT to serve the web "
            "dashboard on (docs/dashboard.md; loopback only, reach it with kubectl "
            "port-forward); empty: off.")) -> None:
    """Run the operator until SIGTERM."""
    stop = threading.Event()
    lost = threading.Event()
    with failures():
        check_role(role, node_name)
        from statehold.controller import operator as op  # loads kopf: only for this command
        from statehold.controller.node_grants import NodeGrants
        from statehold.kube.client import ApiKube  # kopf logs in with the client's configuration
        from statehold.kube.kopf_runtime import login_like

        kube = ApiKube.connect(kubeconfig)
        from statehold.controller.metrics import OperatorMetrics, serve

        metrics = OperatorMetrics(kube if role == "cluster" else None, per_volume=metrics_per_volume)
        engine: Any = None
        fleet: AgentFleet | None = None
        if role == "node":
            from statehold.engine.node import Node

            assert node_name is not None  # check_role refused a node role without it
            engine = Node(home_dir(ctx, home, create=True))
            registry = op.node_registry(kube, engine, node_name, metrics=metrics)
            from statehold.agent.storage_metrics import StorageCollector
            from statehold.csi.metrics import ConditionCollector

            # this node's pools and volumes (docs/metrics.md), read at scrape time
            metrics.registry.register(StorageCollector(engine.pools, per_volume=metrics_per_volume))
            metrics.registry.register(ConditionCollector(engine.pools, engine.home,
                                                         per_volume=metrics_per_volume))
            tickers = op.node_tickers(kube, engine, node_name, metrics=metrics)
        elif replication:
            fleet, certificates = replication_wiring(kube, agent_namespace, agent_port)
            grants = NodeGrants(kube, agent_namespace)
            registry = op.cluster_registry(kube, agents=fleet, metrics=metrics,
                                           move_on_cordon=move_on_cordon, grants=grants)
            tickers = [*op.cluster_tickers(kube, agents=fleet, metrics=metrics,
                                           move_on_cordon=move_on_cordon, grants=grants,
                                           replication_interval=replication_interval),
                       certificates]
        else:
            grants = NodeGrants(kube, agent_namespace)
            registry = op.cluster_registry(kube, metrics=metrics, grants=grants)
            tickers = op.cluster_tickers(kube, metrics=metrics, grants=grants)
        settings = op.settings_for(role, node_name)
        login_like(registry, kube.configuration)
        if dashboard_address and role != "cluster":
            raise InvalidArgument("--dashboard-address goes with --role cluster")
        stop_metrics = serve(metrics_address, metrics.registry) if metrics_address else None
        stop_dashboard = _dashboard(kube, dashboard_address) if dashboard_address else None

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
        if fleet is not None:
            fleet.close()
        if stop_metrics is not None:
            stop_metrics()
        if stop_dashboard is not None:
            stop_dashboard()
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
