"""``statehold volume ...``: thin volumes of a pool (create, get, describe, delete, expand,
attach, detach, mount, unmount, clone, limits, trim)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer

from statehold.cli.context import node
from statehold.cli.output import (
    Format,
    HomeOption,
    OutputOption,
    PoolOption,
    age,
    describe,
    done,
    emit,
    failures,
    human,
    listed_pools,
    pick_pool,
    pool_holding,
    size_arg,
)
from statehold.engine import qos
from statehold.engine import trim as trimming
from statehold.engine.node import Node
from statehold.engine.throttle import Throttle
from statehold.engine.types import FsType, Snapshot, Source, SourceKind, Volume, VolumeMode
from statehold.errors import InvalidArgument

COLUMNS = [
    ("NAME", lambda v: v.name),
    ("POOL", lambda v: v.pool),
    ("SIZE", lambda v: human(v.size)),
    ("MODE", lambda v: v.mode.value),
    ("FS", lambda v: v.fs.value if v.fs else "-"),
    ("DEVICE", lambda v: v.device or "-"),
    ("MOUNTS", lambda v: ",".join(v.mounts) or "-"),
    ("AGE", lambda v: age(v.created_at)),
]
WIDE = [
    ("FORMATTED", lambda v: "yes" if v.formatted else "no"),
    ("SOURCE", lambda v: f"{v.source.kind.value}/{v.source.name}" if v.source else "-"),
    ("PATH", lambda v: str(v.path)),
]


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label {pair!r} is not key=value")
        out[key] = value
    return out


def _source(from_snapshot: str | None, from_volume: str | None) -> Source | None:
    if from_snapshot and from_volume:
        raise InvalidArgument("give --from-snapshot or --from-volume, not both")
    if from_snapshot:
        return Source(SourceKind.SNAPSHOT, from_snapshot)
    if from_volume:
        return Source(SourceKind.VOLUME, from_volume)
    return None


def _created(v: Volume, existed: bool, output: Format) -> None:
    if output in (Format.JSON, Format.YAML):
        emit(v, output, COLUMNS)
    else:
        done("volume", v.name, "unchanged" if existed else "created")


def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name (DNS-1123 label)."),
    size: str = typer.Option(..., "--size", "-s", help="Size, e.g. 10Gi (rounded up to 1Mi)."),
    mode: VolumeMode = typer.Option(VolumeMode.FILESYSTEM, "--mode", help="filesystem or block."),
    fs: FsType = typer.Option(FsType.XFS, "--fs", help="Filesystem made on first mount."),
    from_snapshot: str | None = typer.Option(None, "--from-snapshot", help="Clone a snapshot."),
    from_volume: str | None = typer.Option(None, "--from-volume", help="Clone a volume."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value; repeat for several."),
    trim_schedule: str = typer.Option(
        "", "--trim-schedule", help="Cron line (UTC), e.g. '0 3 * * 0': trim the mounted "
        "filesystem at each slot (`volume trim --due` or the CSI node plugin runs it)."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Create a thin volume (idempotent: the same spec again is not an error)."""
    with failures():
        nbytes = size_arg(size)
        labels = _labels(label)
        source = _source(from_snapshot, from_volume)
        if trim_schedule and mode is VolumeMode.BLOCK:
            raise InvalidArgument("--trim-schedule is for filesystem volumes")
        labels.update(trimming.schedule_labels({trimming.SCHEDULE_PARAMETER: trim_schedule}))
    with node(ctx, home) as n:
        p = pick_pool(n, pool)
        existed = any(v.name == name for v in p.list_volumes())
        v = p.create_volume(
            name, nbytes, mode=mode, fs=None if mode is VolumeMode.BLOCK else fs,
            source=source, labels=labels,
        )
    _created(v, existed, output)


def clone(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name of the new volume."),
    from_snapshot: str | None = typer.Option(None, "--from-snapshot", help="Source snapshot."),
    from_volume: str | None = typer.Option(None, "--from-volume", help="Source volume."),
    size: str | None = typer.Option(None, "--size", "-s", help="Larger size (default: source's)."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Clone a volume or snapshot into a new volume (O(1) reflink, copy on write)."""
    with failures():
        source = _source(from_snapshot, from_volume)
        if source is None:
            raise InvalidArgument("clone needs --from-snapshot or --from-volume")
        nbytes = size_arg(size) if size else None
    with node(ctx, home) as n:
        p = pool_holding(n, pool, source.name, kind=source.kind.value)
        # the new volume holds what its source holds: same mode, same filesystem
        origin: Snapshot | Volume = (
            p.get_snapshot(source.name) if source.kind is SourceKind.SNAPSHOT else p.get_volume(source.name)
        )
        mode, fs, base_size = origin.mode, origin.fs, origin.size
        existed = any(v.name == name for v in p.list_volumes())
        v = p.create_volume(name, nbytes or base_size, mode=mode, fs=fs, source=source)
    _created(v, existed, output)


def get(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="One volume; all when omitted."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """List volumes (or show one)."""
    with node(ctx, home) as n:
        items: Volume | list[Volume] = (
            pool_holding(n, pool, name).get_volume(name) if name
            else [v for p in listed_pools(n, pool) for v in p.list_volumes()]
        )
    emit(items, output, COLUMNS, WIDE)


def describe_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Show a volume in detail, with its snapshots."""
    with node(ctx, home) as n:
        p = pool_holding(n, pool, name)
        v = p.get_volume(name)
        snaps = [f"{s.name}  {human(s.size)}  {age(s.created_at)}" for s in p.list_snapshots(name)]
        limits, throttled = _limits_rows(n, v)
        held = p.volume_space(name)
        last = p.last_trim(name)
    describe(
        [
            ("Name", v.name),
            ("Id", v.id),
            ("Pool", v.pool),
            ("Size", f"{human(v.size)} ({v.size} bytes)"),
            ("Mode", v.mode.value),
            ("Filesystem", v.fs.value if v.fs else None),
            ("Formatted", "yes" if v.formatted else "no"),
            ("Device", v.device),
            ("Mounts", list(v.mounts)),
            ("Source", f"{v.source.kind.value}/{v.source.name}" if v.source else None),
            ("Labels", [f"{k}={val}" for k, val in sorted(v.labels.items())]),
            ("Backing file", str(v.path)),
            ("In the pool", f"{human(held.allocated)}: {human(held.exclusive)} its own, "
                            f"{human(held.shared)} shared with snapshots or clones"),
            ("Trim schedule", v.labels.get(trimming.SCHEDULE_LABEL) or "none"),
            ("Last trim", f"{age(last.last)} ago, gave back {human(last.released)}" if last
             else "never"),
            ("I/O limits", limits),
            ("Throttle", throttled),
            ("Snapshots", snaps),
        ],
    )


def _limits_rows(n: Node, v: Volume) -> tuple[str, list[str] | str]:
    """What the volume's limits are (and where from), and what the kernel holds for its
    device right now: one line per cgroup rule."""
    wanted = qos.configured(v, qos.Overrides(n.home))
    configured = wanted.limits.text() + ("" if wanted.source == "none" else f" ({wanted.source})")
    throttle = Throttle.for_home(n.home)
    if v.device is None:
        return configured, "not attached: limits are applied when the volume is attached"
    rules = throttle.applied(v.device)
    if not rules:
        return configured, f"no rule for {v.device} ({throttle.text()})"
    return configured, [f"{r.cgroup}: {r.limits.text()}" for r in rules]


def limits(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    set_: list[str] = typer.Option(
        [], "--set", help="read_iops|write_iops|read_bps|write_bps=VALUE (bytes: 20Mi); repeatable. "
        "The override replaces the class limits whole; unnamed ones are unlimited."),
    clear: bool = typer.Option(False, "--clear", help="Drop the override: back to the class limits."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Override a volume's I/O limits; an attached volume gets them at once, without a
    remount (docs/qos.md)."""
    with failures():
        if clear == bool(set_):
            raise InvalidArgument("give --set NAME=VALUE (one or more) or --clear")
        pairs = [item.partition("=") for item in set_]
        bad = [item for item, (k, sep, _v) in zip(set_, pairs, strict=True) if not sep or not k]
        if bad:
            raise InvalidArgument(f"--set takes NAME=VALUE, got {bad[0]!r}")
        wanted = qos.parse_settings({k: v for k, _sep, v in pairs}) if set_ else None
    with node(ctx, home) as n:
        v = pool_holding(n, pool, name).get_volume(name)
        overrides = qos.Overrides(n.home)
        if wanted is None:
            overrides.clear(v)
        else:
            overrides.put(v, wanted)
        now = qos.configured(v, overrides)
        if v.device is not None:
            Throttle.for_home(n.home).apply(v.device, now.limits)
    done("volume", name, f"limits {now.limits.text()} ({now.source})"
         + ("" if v.device is None else f", applied to {v.device}"))


def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Delete a volume (refused while attached or mounted; its snapshots survive)."""
    with node(ctx, home) as n:
        pool_holding(n, pool, name).delete_volume(name)
    done("volume", name, "deleted")


def expand(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    size: str = typer.Option(..., "--size", "-s", help="New, larger size, e.g. 20Gi."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Grow a volume, online when mounted (xfs, btrfs); shrinking is refused."""
    with failures():
        nbytes = size_arg(size)
    with node(ctx, home) as n:
        result = pool_holding(n, pool, name).expand(name, nbytes)
    if output in (Format.JSON, Format.YAML):
        emit(result, output, COLUMNS)
    else:
        typer.echo(f"volume/{name} expanded to {human(result.volume.size)} (filesystem: {result.grow.value})")


def attach(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Attach a volume as a loop device and print the device node."""
    with node(ctx, home) as n:
        device = pool_holding(n, pool, name).attach(name)
    typer.echo(device)


def detach(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Detach a volume's loop device (refused while mounted)."""
    with node(ctx, home) as n:
        pool_holding(n, pool, name).detach(name)
    done("volume", name, "detached")


def mount(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    target: Path = typer.Argument(..., help="Directory to mount on (created if missing)."),
    option: list[str] = typer.Option([], "--option", "-O", help="Mount option; repeat for several."),
    readonly: bool = typer.Option(False, "--readonly", help="Mount read-only."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Attach, format if blank, and mount a filesystem volume."""
    target = target.resolve()
    with node(ctx, home) as n:
        p = pool_holding(n, pool, name)
        p.get_volume(name)  # NotFound before anything is made
        made = _missing_dirs(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
            p.mount(name, target, options=option, readonly=readonly)
        except BaseException:
            for d in made:  # a failed mount leaves no directory of ours behind
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
    done("volume", name, f"mounted at {target}")


def _missing_dirs(path: Path) -> list[Path]:
    """The directories ``mkdir -p path`` would create, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def unmount(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    target: Path = typer.Argument(..., help="Mount point."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Unmount a volume from a target (it stays attached until `volume detach`)."""
    with node(ctx, home) as n:
        pool_holding(n, pool, name).unmount(name, target.resolve())
    done("volume", name, f"unmounted from {target.resolve()}")


def trim(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Volume name (or --all, or --due)."),
    all_: bool = typer.Option(False, "--all", help="Every mounted filesystem volume."),
    due: bool = typer.Option(False, "--due", help="The volumes whose --trim-schedule (or "
                             "StorageClass trimSchedule) has a slot since their last trim: "
                             "for a systemd timer or cron job on a standalone host."),
    pool: str | None = PoolOption,
    home: Path | None = HomeOption,
) -> None:
    """Give the space of deleted files back to the pool: discard a mounted volume's free
    blocks (FITRIM), which punches holes in its backing file. Snapshots keep what they share."""
    with failures():
        if sum([bool(name), all_, due]) != 1:
            raise InvalidArgument("give a volume name, --all or --due")
    results: list[trimming.TrimResult] = []
    problems: list[str] = []
    with node(ctx, home) as n:
        if name:
            results.append(pool_holding(n, pool, name).trim(name))
        elif due:
            for out in trimming.run_due(list(listed_pools(n, pool)), time.time()):
                if out.result is not None:
                    results.append(out.result)
                else:
                    problems.append(f"volume/{out.volume.split('/', 1)[1]}: "
                                    f"{out.skipped or out.error}")
        else:
            for p in listed_pools(n, pool):
                for v in p.list_volumes():
                    if v.fs is not None and v.mounts:
                        results.append(p.trim(v.name))
    for r in results:
        typer.echo(f"volume/{r.volume.split('/', 1)[1]} trimmed at {r.target}: gave back "
                   f"{human(r.released)} to the pool ({human(r.allocated_after)} held now)")
    for line in problems:
        typer.echo(line, err=True)
    if not results and not problems:
        typer.echo("nothing to trim", err=True)


def register(app: typer.Typer) -> None:
    """Add ``statehold volume ...`` to app."""
    sub = typer.Typer(help="Thin volumes of a pool.", no_args_is_help=True)
    for cmd_name, fn in (
        ("create", create), ("get", get), ("describe", describe_cmd), ("delete", delete),
        ("expand", expand), ("attach", attach), ("detach", detach), ("mount", mount),
        ("unmount", unmount), ("clone", clone), ("limits", limits), ("trim", trim),
    ):
        sub.command(cmd_name)(fn)
    app.add_typer(sub, name="volume")
