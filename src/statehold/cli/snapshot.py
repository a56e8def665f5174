"""``statehold snapshot create|get|delete``: read-only, O(1) point-in-time copies."""

from __future__ import annotations

from pathlib import Path

import typer

from statehold.cli.context import node
from statehold.cli.output import (
    Format,
    HomeOption,
    OutputOption,
    PoolOption,
    age,
    done,
    emit,
    human,
    listed_pools,
    pool_holding,
)
from statehold.engine.types import Snapshot

COLUMNS = [
    ("NAME", lambda s: s.name),
    ("VOLUME", lambda s: s.source_volume),
    ("SIZE", lambda s: human(s.size)),
    ("READY", lambda s: "true" if s.ready else "false"),
    ("AGE", lambda s: age(s.created_at)),
]
WIDE = [
    ("FROZEN", lambda s: "true" if s.frozen else "false"),
    ("POOL", lambda s: s.pool),
    ("PATH", lambda s: str(s.path)),
]


def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Snapshot name (DNS-1123 label)."),
    volume: str = typer.Option(..., "--volume", "-v", help="Volume to snapshot."),
    freeze: bool = typer.Option(True, "--freeze/--no-freeze", help="fsfreeze a mounted volume first."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Snapshot a volume (reflink; idempotent for the same volume)."""
    with node(ctx, home) as n:
        p = pool_holding(n, pool, volume)
        existed = any(s.name == name for s in p.list_snapshots())
        snap = p.create_snapshot(volume, name, freeze=freeze)
    if output in (Format.JSON, Format.YAML):
        emit(snap, output, COLUMNS)
    else:
        done("snapshot", name, "unchanged" if existed else "created")


def get(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One snapshot; all when omitted."),
    volume: str | None = typer.Option(None, "--volume", "-v", help="Only this volume's snapshots."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """List snapshots (or show one)."""
    with node(ctx, home) as n:
        items: Snapshot | list[Snapshot] = (
            pool_holding(n, pool, name, kind="snapshot").get_snapshot(name) if name
            else [s for p in listed_pools(n, pool) for s in p.list_snapshots(volume)]
        )
    emit(items, output, COLUMNS, WIDE)


def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Snapshot name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Delete a snapshot (clones made from it keep their data)."""
    with node(ctx, home) as n:
        pool_holding(n, pool, name, kind="snapshot").delete_snapshot(name)
    done("snapshot", name, "deleted")


def register(app: typer.Typer) -> None:
    """Add ``statehold snapshot ...`` to app."""
    sub = typer.Typer(help="Snapshots of volumes.", no_args_is_help=True)
    sub.command("create")(create)
    sub.command("get")(get)
    sub.command("delete")(delete)
    app.add_typer(sub, name="snapshot")
