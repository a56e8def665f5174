"""``statehold snapshot create|get|describe|delete``: read-only, O(1) point-in-time copies.

``describe`` and ``get -o wide`` say what each snapshot holds alone (exclusive: what
deleting it gives back to the pool) and what it shares with its volume, other snapshots and
clones (engine/exclusive.py; one FIEMAP walk per snapshot, so only on request).
"""

from __future__ import annotations

from pathlib import Path

import typer

from statehold.cli.context import node
from statehold.cli.output import (
    Column,
    Format,
    HomeOption,
    OutputOption,
    PoolOption,
    age,
    describe,
    done,
    emit,
    human,
    listed_pools,
    pool_holding,
)
from statehold.engine.exclusive import SpaceUse
from statehold.engine.node import Node
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


def _space_columns(n: Node, snaps: list[Snapshot]) -> list[Column]:
    """EXCLUSIVE and SHARED for ``-o wide``, measured once per snapshot now."""
    held: dict[str, SpaceUse] = {s.id: n.pool(s.pool).snapshot_space(s.name) for s in snaps}
    return [("EXCLUSIVE", lambda s: human(held[s.id].exclusive)),
            ("SHARED", lambda s: human(held[s.id].shared))]


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
        wide = list(WIDE)
        if output is Format.WIDE:
            wide += _space_columns(n, items if isinstance(items, list) else [items])
    emit(items, output, COLUMNS, wide)


def describe_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Snapshot name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Show a snapshot, with the bytes it holds alone (what deleting it frees) and shares."""
    with node(ctx, home) as n:
        p = pool_holding(n, pool, name, kind="snapshot")
        s = p.get_snapshot(name)
        held = p.snapshot_space(name)
    if output in (Format.JSON, Format.YAML):
        emit({"name": s.name, "pool": s.pool, "volume": s.source_volume, "size": s.size,
              "allocated": held.allocated, "exclusive": held.exclusive, "shared": held.shared,
              "extents": held.extents}, output, COLUMNS, plain_of=lambda v: v)
        return
    describe([
        ("Name", s.name),
        ("Id", s.id),
        ("Volume", s.source_volume),
        ("Size", f"{human(s.size)} ({s.size} bytes)"),
        ("Created", f"{age(s.created_at)} ago"),
        ("Frozen", "yes" if s.frozen else "no"),
        ("In the pool", f"{human(held.allocated)} ({held.allocated} bytes), {held.extents} extents"),
        ("Exclusive", f"{human(held.exclusive)} ({held.exclusive} bytes): deleting the snapshot "
                      "gives this back to the pool"),
        ("Shared", f"{human(held.shared)} ({held.shared} bytes): also held by the volume, "
                   "other snapshots or clones"),
        ("Path", str(s.path)),
    ])


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
    sub.command("describe")(describe_cmd)
    sub.command("delete")(delete)
    app.add_typer(sub, name="snapshot")
