"""``statehold pool create|get|describe|import|export|delete|thresholds``: the node's disk
pools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from statehold.cli.context import node
from statehold.cli.output import (
    Format,
    HomeOption,
    OutputOption,
    describe,
    done,
    emit,
    failures,
    human,
    size_arg,
)
from statehold.engine.types import PoolLayout, PoolSpec, RaidProfile
from statehold.errors import FailedPrecondition

if TYPE_CHECKING:
    from statehold.engine.pool import Pool


def pool_view(p: Pool) -> dict[str, Any]:
    """What ``get -o json`` shows for a pool: its name, mount point, capacity and how full
    it is against its marks."""
    info = p.describe()
    c = p.capacity()
    space = info.get("space", {})
    return {
        "name": p.name,
        "uuid": info.get("uuid"),
        "fs": info.get("fs"),
        "profile": info.get("profile"),
        "layout": info.get("layout"),
        "sources": list(info.get("sources", [])),
        "mountpoint": str(p.mountpoint),
        "capacity": {
            "total": c.total,
            "used": c.used,
            "provisioned": c.provisioned,
            "free": c.free,
            "allocatable": c.allocatable,
            "overprovisionRatio": c.overprovision_ratio,
        },
        "space": {
            "level": space.get("level"),
            "usedPercent": space.get("used_percent"),
            "warningPercent": space.get("warning"),
            "criticalPercent": space.get("critical"),
        },
    }


COLUMNS = [
    ("NAME", lambda v: v["name"]),
    ("TOTAL", lambda v: human(v["capacity"]["total"])),
    ("USED", lambda v: human(v["capacity"]["used"])),
    ("PROVISIONED", lambda v: human(v["capacity"]["provisioned"])),
    ("FREE", lambda v: human(v["capacity"]["free"])),
]
WIDE = [
    ("FS", lambda v: v["fs"] or "-"),
    ("PROFILE", lambda v: v["profile"] or "-"),
    ("LAYOUT", lambda v: v["layout"] or "file"),
    ("ALLOCATABLE", lambda v: human(v["capacity"]["allocatable"])),
    ("RATIO", lambda v: f"{v['capacity']['overprovisionRatio']:g}"),
    ("SPACE", lambda v: str(v["space"]["level"])),
    ("USED%", lambda v: f"{v['space']['usedPercent']:g}"),
    ("MARKS", lambda v: f"{v['space']['warningPercent']:g}/{v['space']['criticalPercent']:g}"),
    ("MOUNTPOINT", lambda v: v["mountpoint"]),
]


def _identity(v: Any) -> Any:
    return v


def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pool name (DNS-1123 label)."),
    device: list[str] = typer.Option([], "--device", "-d", help="Block device; repeat for several."),
    images: int = typer.Option(0, "--images", help="File-backed disk images to create (default 1)."),
    image_size: str = typer.Option("10Gi", "--image-size", help="Size of each image, e.g. 10Gi."),
    profile: RaidProfile = typer.Option(RaidProfile.SINGLE, "--profile", help="btrfs data profile."),
    overprovision: float = typer.Option(10.0, "--overprovision", help="Thin provisioning ratio."),
    force: bool = typer.Option(False, "--force", help="Use devices holding a filesystem."),
    layout: PoolLayout = typer.Option(
        PoolLayout.FILE, "--layout",
        help="file (default): a reflinked file per volume. subvolume (the disks or images "
        "are formatted btrfs, one or several): a btrfs subvolume per volume, snapshots "
        "that stay fast on fragmented volumes, slower writes."),
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Create a pool from block devices or (the default) file-backed images under the home.

    One disk becomes XFS with reflink; several become one btrfs filesystem. The layout is
    fixed for the pool's life.
    """
    with failures():
        size = size_arg(image_size)
        count = images or (0 if device else 1)
    with node(ctx, home, create=True) as n:
        spec = PoolSpec(
            name=name,
            devices=tuple(device),
            images=tuple(str(n.disks_dir / f"{name}-{i}.img") for i in range(count)),
            image_size=size if count else 0,
            profile=profile,
            overprovision_ratio=overprovision,
            force=force,
            layout=layout.value,
        )
        existed = any(p.name == name for p in n.pools())
        p = n.create_pool(spec)
        view = pool_view(p)
    if output in (Format.JSON, Format.YAML):
        emit(view, output, COLUMNS, plain_of=_identity)
    else:
        done("pool", name, "unchanged" if existed else "created")


def get(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One pool; all when omitted."),
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """List pools with capacity (total, physically used, provisioned, free)."""
    with node(ctx, home) as n:
        views: Any = pool_view(n.pool(name)) if name else [pool_view(p) for p in n.pools()]
    emit(views, output, COLUMNS, WIDE, plain_of=_identity)


def describe_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pool name."),
    home: Path | None = HomeOption,
) -> None:
    """Show a pool in detail: capacity, volumes and snapshots."""
    with node(ctx, home) as n:
        p = n.pool(name)
        v = pool_view(p)
        vols = [f"{x.name}  {human(x.size)}  {x.mode.value}" for x in p.list_volumes()]
        snaps = [f"{s.name}  (of {s.source_volume})" for s in p.list_snapshots()]
    c, sp = v["capacity"], v["space"]
    describe(
        [
            ("Name", name),
            ("UUID", v["uuid"]),
            ("Filesystem", f"{v['fs']} ({v['profile']})"),
            ("Layout", (f"{v['layout'] or 'file'} (snapshots are btrfs subvolume snapshots)"
                        if v["layout"] == "subvolume" else
                        f"{v['layout'] or 'file'} (snapshots are reflink copies)")),
            ("Disks", v["sources"]),
            ("Mountpoint", v["mountpoint"]),
            ("Total", human(c["total"])),
            ("Used", human(c["used"])),
            ("Provisioned", human(c["provisioned"])),
            ("Free", human(c["free"])),
            ("Allocatable", human(c["allocatable"])),
            ("Overprovision ratio", f"{c['overprovisionRatio']:g}"),
            ("Space", f"{sp['level']} ({sp['usedPercent']:g} % used; warning at "
                      f"{sp['warningPercent']:g} %, critical at {sp['criticalPercent']:g} %: "
                      "new volumes, clones and snapshots are refused from there)"),
            ("Volumes", vols),
            ("Snapshots", snaps),
        ],
    )


def import_cmd(
    ctx: typer.Context,
    sources: list[str] = typer.Argument(..., help="Devices or image files holding the pool."),
    name: str | None = typer.Option(None, "--name", help="Expected pool name."),
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Import a pool made elsewhere (its metadata lives inside it)."""
    with node(ctx, home, create=True) as n:
        p = n.import_pool([str(Path(s).resolve()) if Path(s).exists() else s for s in sources],
                          name=name)
        view = pool_view(p)
    if output in (Format.JSON, Format.YAML):
        emit(view, output, COLUMNS, plain_of=_identity)
    else:
        done("pool", view["name"], "imported")


def export_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pool name."),
    home: Path | None = HomeOption,
    wait: float = typer.Option(20.0, "--wait", min=0.0,
                               help="Seconds to wait for the host's other processes to let go."),
) -> None:
    """Unmount a pool and detach its disks; they keep everything (`pool import` brings it back).

    Refused while a volume or snapshot of the pool is attached. The other Statehold
    processes of the host let go of the pool first; one still held after a while is
    reported (Temporary) with its holders, and running the command again finishes it.
    """
    with node(ctx, home) as n:
        sources = n.sources_of(name)
        n.export_pool(name, wait=wait)
    done("pool", name, "exported")
    typer.echo(f"import it again with: statehold pool import {' '.join(sources)} --name {name}")


def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pool name."),
    home: Path | None = HomeOption,
) -> None:
    """Delete an empty pool: export it, then remove the image files it was made of.

    Refused while the pool holds volumes or snapshots (delete them first, or `pool export`
    to keep them). Block devices are left as they are, filesystem included.
    """
    with node(ctx, home) as n:
        p = n.pool(name)
        held = [f"volume {v.name}" for v in p.list_volumes()]
        held += [f"snapshot {s.name}" for s in p.list_snapshots()]
        if held:
            raise FailedPrecondition(
                f"pool {name!r} is not empty ({', '.join(held)}): delete them first, "
                f"or `statehold pool export {name}` to keep them")
        n.destroy_pool(name)
    done("pool", name, "deleted")


def thresholds(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Pool name."),
    warning: float | None = typer.Option(None, "--warning", help="Percent used that warns."),
    critical: float | None = typer.Option(
        None, "--critical", help="Percent used from which new volumes, clones and snapshots "
        "are refused."),
    home: Path | None = HomeOption,
) -> None:
    """Show or set how full the pool may get (kept in the pool; in a cluster the StoragePool's
    spec.thresholds set them)."""
    with node(ctx, home) as n:
        p = n.pool(name)
        if warning is not None or critical is not None:
            now = p.thresholds()
            p.set_thresholds(now.warning if warning is None else warning,
                             now.critical if critical is None else critical)
        space = p.space()
    typer.echo(f"pool/{name}: warning at {space.thresholds.warning:g} %, critical at "
               f"{space.thresholds.critical:g} %; now {space.used_percent:.1f} % used "
               f"({space.level.value})")


def register(app: typer.Typer) -> None:
    """Add ``statehold pool ...`` to app."""
    sub = typer.Typer(help="Disk pools of this node.", no_args_is_help=True)
    sub.command("create")(create)
    sub.command("get")(get)
    sub.command("describe")(describe_cmd)
    sub.command("import")(import_cmd)
    sub.command("export")(export_cmd)
    sub.command("delete")(delete)
    sub.command("thresholds")(thresholds)
    app.add_typer(sub, name="pool")
