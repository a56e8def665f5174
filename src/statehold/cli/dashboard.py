"""``statehold dashboard``: the web dashboard over a cluster, or over this host's home with
``--standalone`` (see docs/dashboard.md).

Only wiring. Cluster: the reads use the kubeconfig's (or the pod's) identity; a visitor acts
with the bearer token they sign in with (``ApiKube.with_token``), never with ours.
Standalone: read-only, unless ``--allow-snapshots`` prints a one-time token to stderr that
a visitor signs in with to take engine snapshots.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import typer

from statehold.cli.context import node
from statehold.cli.output import HomeOption, failures
from statehold.errors import InvalidArgument


def loopback(listen: str) -> tuple[str, int]:
    from statehold.dashboard.server import parse_listen

    host, port = parse_listen(listen)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidArgument(f"--listen {listen}: the dashboard listens on the loopback "
                              "only; reach it with kubectl port-forward or an SSH tunnel")
    return host, port


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(ctx: typer.Context,
                  listen: str = typer.Option("127.0.0.1:8089", "--listen",
                                             help="HOST:PORT to serve on (loopback only)."),
                  kubeconfig: str | None = typer.Option(None, "--kubeconfig",
                                                        help="Path to a kubeconfig file."),
                  standalone: bool = typer.Option(False, "--standalone", help=(
                      "Serve this host's pools, volumes and snapshots (the home), "
                      "not a cluster.")),
                  allow_snapshots: bool = typer.Option(False, "--allow-snapshots", help=(
                      "Standalone: allow 'snapshot now' for visitors who sign in with the "
                      "token printed on stderr.")),
                  home: Path | None = HomeOption) -> None:
        """Serve the web dashboard: pools, volumes, snapshots, backups, schedules, restores;
        actions for users who sign in with a token that may create them."""
        from statehold.dashboard.server import Dashboard, serve_forever

        with failures():
            host, port = loopback(listen)
            if allow_snapshots and not standalone:
                raise InvalidArgument("--allow-snapshots goes with --standalone (in a cluster, "
                                      "RBAC decides who may act)")
        if standalone:
            from statehold.dashboard.sources import EngineSource

            with node(ctx, home) as n:
                token = secrets.token_urlsafe(24) if allow_snapshots else None
                if token:
                    typer.echo(f"dashboard action token: {token}", err=True)
                serve_forever(Dashboard(EngineSource(n, action_token=token)), host, port)
            return
        from statehold.kube.client import ApiKube

        with failures():
            kube = ApiKube.connect(kubeconfig)
            serve_forever(Dashboard.for_cluster(kube, as_user=kube.with_token), host, port)

    @app.command("serve")
    def serve(ctx: typer.Context,
              listen: str = typer.Option("127.0.0.1:8089", "--listen",
                                         help="HOST:PORT to serve on (loopback only)."),
              allow_snapshots: bool = typer.Option(False, "--allow-snapshots", help=(
                  "Allow 'snapshot now' for visitors who sign in with the token printed "
                  "on stderr.")),
              home: Path | None = HomeOption) -> None:
        """The standalone mode's dashboard: this host's pools, volumes and snapshots
        (the same pages as ``statehold dashboard --standalone``)."""
        dashboard(ctx, listen=listen, kubeconfig=None, standalone=True,
                  allow_snapshots=allow_snapshots, home=home)
