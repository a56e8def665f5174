"""The ``statehold`` command (also installed as ``kubectl-statehold``).

Only wiring: each area registers its commands from its own module, so areas stay apart.
The environment is read here, once (settings and secrets, :class:`CliConfig`), and handed
to every command as the root context's object (see ``statehold.cli.context``).
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from statehold import __version__
from statehold.cli.context import CliConfig
from statehold.cli.output import exit_code
from statehold.engine import freezekeeper, rcu
from statehold.errors import StateholdError

# Each module exposes ``register(app: typer.Typer) -> None``.
AREAS = (
    "statehold.cli.pool",
    "statehold.cli.volume",
    "statehold.cli.snapshot",
    "statehold.cli.demo",
    "statehold.cli.backup",
    "statehold.cli.targets",
    "statehold.cli.csi",
    "statehold.cli.kubectl",
    "statehold.cli.operator",
    "statehold.cli.scheduler",
    "statehold.cli.shared",
    "statehold.cli.agent",
    "statehold.cli.dashboard",
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="statehold",
        help="Stateful storage for Kubernetes: pools, volumes, snapshots, backups.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    @app.callback()
    def _root() -> None:
        """Stateful storage for Kubernetes: pools, volumes, snapshots, backups."""

    @app.command()
    def version() -> None:
        """Print the Statehold version."""
        typer.echo(__version__)

    for name in AREAS:
        importlib.import_module(name).register(app)
    return app


def main() -> None:
    try:
        config = CliConfig.from_env()
    except StateholdError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exit_code(exc))
    logging.basicConfig(
        level=config.settings.log_level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    freezekeeper.configure(rcu.Expedite() if config.settings.freeze_expedite_rcu else None)
    build_app()(obj=config)


if __name__ == "__main__":
    main()
