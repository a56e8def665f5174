"""``statehold dashboard``: the web dashboard over a cluster (see docs/dashboard.md).

Only wiring: the reads use the kubeconfig's (or the pod's) identity; a visitor acts with
the bearer token they sign in with (``ApiKube.with_token``), never with ours.
"""

from __future__ import annotations

import typer

from statehold.cli.output import failures
from statehold.errors import InvalidArgument


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(listen: str = typer.Option("127.0.0.1:8089", "--listen",
                                             help="HOST:PORT to serve on (loopback only)."),
                  kubeconfig: str | None = typer.Option(None, "--kubeconfig",
                                                        help="Path to a kubeconfig file.")) -> None:
        """Serve the web dashboard: pools, volumes, snapshots, backups, schedules, restores;
        actions for users who sign in with a token that may create them."""
        from statehold.dashboard.server import Dashboard, parse_listen, serve_forever
        from statehold.kube.client import ApiKube

        with failures():
            host, port = parse_listen(listen)
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise InvalidArgument(f"--listen {listen}: the dashboard listens on the "
                                      "loopback only; reach it with kubectl port-forward")
            kube = ApiKube.connect(kubeconfig)
            serve_forever(Dashboard(kube, as_user=kube.with_token), host, port)
