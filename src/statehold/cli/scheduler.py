"""CLI: ``statehold scheduler-extender`` — the kube-scheduler extender HTTP service.

Only wiring: flags → ExtenderConfig, Ledger, a ClusterView (the cluster's API through
``statehold.kube``, or a file of objects for a dry run), the HTTP server.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer
import yaml

from statehold.cli.output import failures
from statehold.errors import InvalidArgument
from statehold.kube import connect as kube_connect

log = logging.getLogger(__name__)


def _load_objects(path: Path) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{path}: not YAML or JSON: {exc}") from exc
    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, list):  # a JSON array of objects
            out.extend(i for i in doc if isinstance(i, dict))
        elif isinstance(doc, dict) and doc.get("kind", "").endswith("List"):
            out.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
        elif isinstance(doc, dict):
            out.append(doc)
    return out


def register(app: typer.Typer) -> None:
    """Add this area's commands to app."""

    @app.command("scheduler-extender")
    def scheduler_extender(
        listen: str = typer.Option("127.0.0.1:9251", "--listen", help="HOST:PORT to serve on."),
        fail_closed: bool = typer.Option(
            False, "--fail-closed",
            help="On an internal error answer the filter with Error (the pod waits) instead "
                 "of letting every node pass."),
        reservation_ttl: float = typer.Option(
            180.0, help="Seconds a reservation lives if its pod is never provisioned."),
        settle: float = typer.Option(
            75.0, help="Seconds a reservation outlives its provisioned volume: at least the "
                       "time StoragePool status takes to count a new volume (the operator "
                       "refreshes it every 60 s)."),
        cache_seconds: float = typer.Option(
            2.0, help="How long StoragePool and StorageClass lists are reused."),
        kubeconfig: str | None = typer.Option(
            None, help="Kubeconfig file (default: in-cluster, then ~/.kube/config)."),
        cluster_file: Path | None = typer.Option(
            None, exists=True, dir_okay=False,
            help="Serve from the PVCs, PVs, StorageClasses and StoragePools in this YAML/JSON "
                 "file instead of a cluster (dry runs, tests)."),
    ) -> None:
        """Serve the kube-scheduler extender (POST /filter, /prioritize; GET /healthz,
        /metrics)."""
        from statehold.scheduler.ledger import Ledger
        from statehold.scheduler.server import ExtenderServer, parse_listen
        from statehold.scheduler.service import Extender, ExtenderConfig

        with failures():
            address = parse_listen(listen)
            view: Any
            if cluster_file is not None:
                from statehold.scheduler.objects import memory_view

                view = memory_view(_load_objects(cluster_file))
            else:
                from statehold.scheduler.kubeview import KubeClusterView

                view = KubeClusterView(kube_connect(kubeconfig),
                                       cache_seconds=cache_seconds)
            extender = Extender(view, ledger=Ledger(ttl=reservation_ttl, settle=settle),
                                config=ExtenderConfig(fail_open=not fail_closed))
            server = ExtenderServer(address, extender)

        def _stop(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes, which would otherwise land in a request's latency.
        gc.freeze()
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        typer.echo(f"statehold scheduler extender listening on {server.url}", err=True)
        sys.stderr.flush()
        try:
            server.serve_forever()
        finally:
            server.server_close()
