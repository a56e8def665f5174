"""``statehold backup|restore ...``: backups of volumes to a directory or S3 (the targets
they go to: :mod:`statehold.cli.targets`).

A backup whose manifest cannot be read (damaged, quarantined, of a newer version) never
stops a command: listings show it with its STATUS, and every command that passed one over
says so on stderr (format §9.1); ``backup forget`` removes it.

Secrets never go into the targets file: the repository password comes from
``$STATEHOLD_REPO_PASSWORD`` or ``--password-file``; S3 keys from ``$AWS_ACCESS_KEY_ID`` /
``$AWS_SECRET_ACCESS_KEY`` or the target's credentials file. Progress bars (bytes, rate,
ETA) go to stderr, results to stdout.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from statehold.backup.collecting import forget, forget_group, gc, prune
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Damaged
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Policy, parse_duration
from statehold.backup.sampling import Subset
from statehold.backup.verifying import verify
from statehold.cli.context import (
    PasswordFileOption,
    node,
    open_repository,
)
from statehold.cli.output import (
    Format,
    HomeOption,
    OutputOption,
    PoolOption,
    age,
    console,
    describe,
    done,
    emit,
    failures,
    human,
    pick_pool,
)
from statehold.errors import Corrupt, InvalidArgument

backup_app = typer.Typer(help="Backups of volumes: create, list, verify, prune, forget, gc, "
                         "migrate, rebuild-index.",
                         no_args_is_help=True)

TargetOption = typer.Option(..., "--target", "-t", help="Backup target name (statehold target add).")


# ---- shared plumbing -------------------------------------------------------------------

@contextmanager
def _bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields the (done, total) callback the core calls."""
    if not enabled:
        yield lambda done, total: None
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console(err=True), transient=False,
    )
    task = progress.add_task(label, total=None)
    with progress:
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _ref(pool_opt: str | None, ref: str) -> tuple[str | None, str]:
    """POOL/NAME or NAME (with --pool or the only pool)."""
    pool, sep, name = ref.partition("/")
    return (pool, name) if sep else (pool_opt, ref)


Row = Manifest | Damaged
"""A listed backup: its manifest, or why it cannot be read."""


def _of(get: Callable[[Manifest], str], unknown: str = "?") -> Callable[[Row], str]:
    """A column of manifests; a backup that cannot be read shows ``unknown``."""
    return lambda r: get(r) if isinstance(r, Manifest) else unknown


def _created(r: Row) -> float | None:
    """When the backup was made: its manifest says, or else its id (UTC time first)."""
    if isinstance(r, Manifest):
        return r.created
    try:
        return float(calendar.timegm(time.strptime(r.backup_id[:16], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def _age(r: Row) -> str:
    when = _created(r)
    return "?" if when is None else age(when)


def _status(r: Row) -> str:
    return "ok" if isinstance(r, Manifest) else r.state


COLUMNS: list[tuple[str, Callable[[Any], str]]] = [
    ("ID", lambda r: r.backup_id),
    ("VOLUME", _of(lambda m: m.volume)),
    ("SIZE", _of(lambda m: human(m.size))),
    ("STORED-NEW", _of(lambda m: human(m.stats.stored_new) or "0")),
    ("TYPE", _of(lambda m: "incremental" if m.parent else "full")),
    ("AGE", _age),
    ("STATUS", _status),
]
WIDE: list[tuple[str, Callable[[Any], str]]] = [
    ("CHUNKS", _of(lambda m: str(m.stats.chunks))),
    ("READ", _of(lambda m: human(m.stats.bytes_read) or "0")),
    ("PARENT", _of(lambda m: m.parent or "-", "-")),
    ("SNAPSHOT", _of(lambda m: m.snapshot or "-", "-")),
]


def _plain(r: Row) -> dict[str, Any]:
    if isinstance(r, Damaged):
        return {"backup_id": r.backup_id, "status": r.state, "reason": r.reason, "key": r.key}
    head = r.header()
    head.pop("format", None)
    head.pop("entries", None)
    head["status"] = "ok"
    return head


def _warn(damaged: Sequence[Damaged]) -> None:
    """Name on stderr each backup a command passed over because it cannot be read."""
    for d in damaged:
        typer.echo(f"warning: backup {d.backup_id} cannot be read ({d.state}, {d.key}): {d.reason}",
                   err=True)
    if any(d.state != "unsupported" for d in damaged):
        typer.echo("warning: gc deletes no chunk while a backup cannot be read; `statehold backup "
                   "forget ID` removes one", err=True)


# ---- backup ------------------------------------------------------------------------------

@backup_app.command("create")
def create_cmd(
    ctx: typer.Context,
    volume: str = typer.Argument(..., help="Volume to back up: POOL/NAME, or NAME with --pool."),
    target: str = TargetOption,
    pool: str | None = PoolOption,
    no_freeze: bool = typer.Option(False, "--no-freeze", help="Do not fsfreeze a mounted volume."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Snapshot a volume and back the snapshot up (incremental after the first time)."""
    from statehold.backup.volumes import backup_volume

    pool_name, name = _ref(pool, volume)
    with failures():
        repo = open_repository(ctx, home, target, password_file)
    with node(ctx, home) as n:
        p = pick_pool(n, pool_name)
        start = time.monotonic()
        with _bar(f"backup {p.name}/{name}", not quiet) as bar:
            result = backup_volume(repo, p, name, freeze=not no_freeze, progress=bar)
        secs = time.monotonic() - start
    m = result.manifest
    _warn(result.damaged)
    if output in (Format.JSON, Format.YAML):
        emit(m, output, COLUMNS, plain_of=_plain)
        return
    done("backup", m.backup_id, "created")
    typer.echo(f"volume {m.volume}: {human(m.size)}, read {human(m.stats.bytes_read) or 0}, "
               f"new {human(m.stats.bytes_new) or 0} stored as {human(m.stats.stored_new) or 0}, "
               f"{'incremental from ' + m.parent if m.parent else 'full'}, {secs:.1f}s")


@backup_app.command("create-tree")
def create_tree_cmd(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="Directory tree to back up (e.g. a shared volume)."),
    target: str = TargetOption,
    volume: str = typer.Option(..., "--volume", help="Name the backups of this tree are listed under."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Back up a directory tree (file-tree mode, for shared volumes); unchanged files are not re-read."""
    from statehold.backup.tree import backup_tree

    with failures():
        repo = open_repository(ctx, home, target, password_file)
        trees = [m for m in repo.manifests() if m.volume == volume and m.kind == "tree"]
        parent = max(trees, key=lambda m: (m.created, m.backup_id)) if trees else None
        with _bar(f"backup {directory}", not quiet) as bar:
            m = backup_tree(repo, directory.resolve(), volume=volume, parent=parent, progress=bar)
    if output in (Format.JSON, Format.YAML):
        emit(m, output, COLUMNS, plain_of=_plain)
        return
    done("backup", m.backup_id, "created")


@backup_app.command("get")
def get_cmd(
    ctx: typer.Context,
    backup: str | None = typer.Argument(None, help="One backup id (or unique part); all when omitted."),
    target: str = TargetOption,
    volume: str | None = typer.Option(None, "--volume", help="Only backups of this volume (POOL/NAME)."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """List backups in a target (or show one); STATUS flags the ones that cannot be read."""
    with failures():
        repo = open_repository(ctx, home, target, password_file)
        items: Row | list[Row]
        if backup:
            items = repo.examine(repo.resolve(backup))
            damaged = [items] if isinstance(items, Damaged) else []
        else:
            listing = repo.scan()
            damaged = listing.damaged  # of an unknown volume: listed with any --volume
            rows: list[Row] = [m for m in listing.manifests if volume is None or m.volume == volume]
            items = sorted([*rows, *damaged], key=lambda r: (_created(r) or 0.0, r.backup_id))
    emit(items, output, COLUMNS, WIDE, plain_of=_plain)
    _warn(damaged)


@backup_app.command("describe")
def describe_cmd(
    ctx: typer.Context,
    backup: str = typer.Argument(..., help="Backup id (or a unique part of it)."),
    target: str = TargetOption,
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Show everything a backup's manifest records."""
    with failures():
        repo = open_repository(ctx, home, target, password_file)
        m = repo.load_manifest(repo.resolve(backup))
    s = m.stats
    describe([
        ("ID", m.backup_id), ("Volume", m.volume), ("Kind", m.kind), ("Size", f"{human(m.size)} ({m.size})"),
        ("Created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.created)) + f" ({age(m.created)} ago)"),
        ("Type", f"incremental from {m.parent}" if m.parent else "full"),
        ("Snapshot", m.snapshot), ("Host", m.host), ("Chunk size", human(m.chunk_size)),
        ("Chunks", f"{len(m)} ({s.chunks_new} new)"),
        ("Read", human(s.bytes_read) or "0"), ("New data", human(s.bytes_new) or "0"),
        ("Stored", human(s.stored_new) or "0"),
        ("Labels", [f"{k}={v}" for k, v in sorted(m.labels.items())]),
    ])


@backup_app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    target: str = TargetOption,
    deep: bool = typer.Option(False, "--deep", help="Download, decrypt and re-hash every chunk."),
    read_data_subset: str | None = typer.Option(
        None, "--read-data-subset", metavar="N/M|P%", help="Also read a part of the stored data "
        "in full (packs; chunk objects in format 1), every chunk decrypted and re-hashed: N/M is "
        "slice N of M (1/5 .. 5/5 together read everything once), P% a random share (--seed)."),
    seed: int | None = typer.Option(None, "--seed", help="With P%: pick the same packs as an "
                                    "earlier run with this seed (the seed used is printed)."),
    quarantine: bool = typer.Option(
        False, "--quarantine", help="Move damaged manifests (and the damaged chunks that --deep "
        "or --read-data-subset reads) to quarantine/; a damaged chunk inside a pack (format 2) "
        "loses its index entry instead. "
        "The next backup of the same data stores the chunk again (takes the exclusive lock)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
    output: Format = OutputOption,
) -> None:
    """Check that every backup can be restored; exits 1 and lists the affected backups if not."""
    with failures():
        subset = Subset.parse(read_data_subset, seed) if read_data_subset is not None else None
        if seed is not None and subset is None:
            raise InvalidArgument("--seed needs --read-data-subset P%")
        if deep and subset is not None:
            raise InvalidArgument("--deep reads every chunk already: give --deep or --read-data-subset")
        subset = subset.resolved() if subset is not None else None
        repo = open_repository(ctx, home, target, password_file)
        with _bar("verify", (deep or subset is not None) and not quiet) as bar:
            report = verify(repo, deep=deep, progress=bar, quarantine=quarantine, subset=subset)
    if output in (Format.JSON, Format.YAML):
        emit(report, output, [])
    else:
        mode = "deep" if deep else "quick"
        sampled = report.subset
        typer.echo(f"verify ({mode}): {report.backups} backups, {report.chunks} chunks"
                   + (f", {human(report.bytes_checked)} checked" if deep else "")
                   + (": ok" if report.ok else f": {len(report.problems)} problems"))
        if sampled is not None:
            typer.echo(f"read data subset {sampled.subset}: {sampled.read} of {sampled.total} "
                       f"{sampled.objects} ({human(sampled.bytes_read)} stored, "
                       f"{sampled.chunks_checked} chunks, {human(sampled.plain_bytes)} checked)")
        for p in report.problems:
            moved = ("" if not p.quarantined else f"; moved to {p.quarantined}"
                     if p.quarantined.startswith("quarantine/") else f"; {p.quarantined}")
            typer.echo(f"{p.what} {p.name}: {p.detail}; affects {', '.join(p.backups) or 'no backup'}"
                       f"{moved}")
    if not report.ok:
        with failures():
            raise Corrupt(f"{len(report.problems)} problems; affected backups: "
                          + ", ".join(report.affected()))


@backup_app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    target: str = TargetOption,
    keep_last: int = typer.Option(0, "--keep-last", help="Keep the N newest backups of each volume."),
    hourly: int = typer.Option(0, "--hourly", help="Keep the newest backup of each of the last N hours."),
    daily: int = typer.Option(0, "--daily", help="... of each of the last N days."),
    weekly: int = typer.Option(0, "--weekly", help="... of each of the last N ISO weeks."),
    monthly: int = typer.Option(0, "--monthly", help="... of each of the last N months."),
    yearly: int = typer.Option(0, "--yearly", help="... of each of the last N years."),
    within: str | None = typer.Option(None, "--within", help="Keep every backup made within this "
                                      "long of the volume's newest (e.g. 36h, 14d, 2w)."),
    volume: str | None = typer.Option(None, "--volume", help="Only this volume's single backups "
                                      "(POOL/NAME; group backups are judged by set)."),
    statefulset: str | None = typer.Option(None, "--statefulset", help="Only this StatefulSet's "
                                           "group backups (NAMESPACE/NAME), each judged by its "
                                           "group manifest's time and removed with its members."),
    origin: str | None = typer.Option(None, "--origin", help="Only the backups of this origin: "
                                      "schedule/NAMESPACE/NAME (a cluster schedule's), or "
                                      "'manual' (made by hand). Default: every backup."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Remove backups a retention policy does not keep (then run `backup gc`). Group backups
    (StatefulSets) are units: a set's groups are judged by their time, and a group goes
    with all its members, never a member alone."""
    with failures():
        policy = Policy(keep_last, hourly, daily, weekly, monthly, yearly,
                        parse_duration(within) if within else 0.0)
        the_set: tuple[str, str] | None = None
        if statefulset is not None:
            ns, _, name = statefulset.partition("/")
            if not ns or not name or "/" in name:
                raise InvalidArgument(f"--statefulset {statefulset!r} must be NAMESPACE/NAME")
            the_set = (ns, name)
        repo = open_repository(ctx, home, target, password_file)
        result = prune(repo, policy, volume=volume, statefulset=the_set, dry_run=dry_run,
                       origin=None if origin is None else "" if origin == "manual" else origin)
    verb = "would be removed" if dry_run else "removed"
    for gid, members in sorted(result.groups_removed.items()):
        done("group", gid, f"{verb} with {len(members)} member backup(s)")
    for bid in result.removed:
        done("backup", bid, verb)
    for gid in result.groups_unreadable:
        done("group", gid, "cannot be read: neither kept nor removed, nor any backup that may "
             "be its member")
    for d in result.damaged:
        state = "cannot be read" if d.state == "unsupported" else (
            "would be quarantined" if dry_run else "quarantined")
        done("backup", d.backup_id, f"{state} ({d.key}): {d.reason}")
    typer.echo(f"{len(result.kept)} kept, {len(result.removed)} {verb}"
               + (f"; groups: {len(result.groups_kept)} kept, {len(result.groups_removed)} {verb}"
                  if result.groups_kept or result.groups_removed else "")
               + (f", {len(result.damaged)} cannot be read (neither kept nor removed)"
                  if result.damaged else ""))


@backup_app.command("gc")
def gc_cmd(
    ctx: typer.Context,
    target: str = TargetOption,
    grace: float = typer.Option(3600.0, "--grace", help="Spare unreferenced chunks younger than this (s)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count, delete nothing."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Delete chunks no backup references (mark and sweep, under the exclusive lock)."""
    with failures():
        if grace < 0:
            raise InvalidArgument("--grace must not be negative")
        repo = open_repository(ctx, home, target, password_file)
        r = gc(repo, grace=grace, dry_run=dry_run)
    typer.echo(f"gc: {r.chunks_total} chunks, {r.chunks_referenced} referenced, "
               f"{r.chunks_deleted} {'to delete' if dry_run else 'deleted'} ({human(r.bytes_deleted) or 0}), "
               f"{r.chunks_in_grace} in grace, {r.locks_removed} stale locks removed"
               + (f", {r.chunks_kept_unknown} kept because {len(r.damaged)} backups cannot be read"
                  if r.damaged else ""))
    _warn(r.damaged)


@backup_app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    target: str = TargetOption,
    pack_size: int | None = typer.Option(None, "--pack-size", help="Pack size, bytes (default 16 MiB)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Convert a format 1 repository to format 2 in place (packs and an index; every backup
    stays restorable). Safe to run again after an interruption. Stop older Statehold
    releases writing to it first: they cannot read format 2."""
    from statehold.backup.migrate import migrate

    with failures():
        repo = open_repository(ctx, home, target, password_file)
        was = repo.config.version
        with _bar("migrate", not quiet) as bar:
            r = migrate(repo, pack_size=pack_size, progress=bar)
    state = "converted to format 2" if r.converted else f"already format {was}"
    done("target", target, f"{state}: {r.chunks_packed} chunks packed into {r.packs} packs "
         f"({human(r.bytes_packed) or 0}), {r.chunks_removed} chunk objects removed")


@backup_app.command("rebuild-index")
def rebuild_index_cmd(
    ctx: typer.Context,
    target: str = TargetOption,
    all_packs: bool = typer.Option(False, "--all", help="Read the header of every pack, not only "
                                   "those no index object names (finds entries lost from a pack "
                                   "that is indexed in part)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Rebuild a format 2 repository's index from its pack headers, after index objects were
    lost or damaged (restores then fail: chunk not in the index). Takes the exclusive lock;
    safe to run again after an interruption. Run it before `backup gc`, which deletes packs
    no index object names."""
    from statehold.backup.rebuildindex import rebuild_index

    with failures():
        repo = open_repository(ctx, home, target, password_file)
        with _bar("rebuild-index", not quiet) as bar:
            r = rebuild_index(repo, all_packs=all_packs, progress=bar)
    for key, why in sorted(r.damaged_packs.items()):
        typer.echo(f"pack {key}: header cannot be read, skipped (its chunks stay unfound): {why}")
    for b in r.damaged_blobs:
        typer.echo(f"chunk {b.chunk} in {b.pack}: damaged, not indexed: {b.detail}")
    for key in r.index_quarantined:
        typer.echo(f"index object {key.removeprefix('quarantine/')}: damaged, moved to {key}")
    for key, why in sorted(r.index_kept.items()):
        typer.echo(f"index object {key}: cannot be read, left in place: {why}")
    done("target", target, f"index rebuilt: {r.packs_read} of {r.packs_listed} pack headers read, "
         f"{human(r.bytes_read) or 0} of chunks checked, {r.entries_added} entries put in "
         f"{r.index_objects} index objects")
    if not r.ok:
        with failures():
            raise Corrupt(f"{len(r.damaged_packs)} packs and {len(r.damaged_blobs)} chunks could not be "
                          f"indexed, {len(r.index_kept)} index objects cannot be read; run `backup verify` "
                          "to see the backups they break")


@backup_app.command("forget")
def forget_cmd(
    ctx: typer.Context,
    backup: str | None = typer.Argument(None, help="Backup id (or a unique part of it)."),
    target: str = TargetOption,
    group: str | None = typer.Option(None, "--group", help="Forget this group backup (a "
                                     "StatefulSet's, full id) with all its members instead."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Remove one backup, readable or damaged (its manifest; its chunks go at the next `backup
    gc`). A member of a group backup is refused: forget its group with --group."""
    with failures():
        if (backup is None) == (group is None):
            raise InvalidArgument("name one backup id, or one group with --group")
        repo = open_repository(ctx, home, target, password_file)
        if group is not None:
            r = forget_group(repo, group)
            n = sum(k.startswith("manifests/") for k in r.removed)
            done("group", r.backup_id, f"forgotten with {n} member backup(s) (their chunks go "
                 "at the next `backup gc`)")
            return
        assert backup is not None
        r = forget(repo, repo.resolve(backup))
    done("backup", r.backup_id, "forgotten (its chunks go at the next `backup gc`)")


# ---- restore -----------------------------------------------------------------------------

def restore_cmd(
    ctx: typer.Context,
    backup: str = typer.Argument(..., help="Backup id (or a unique part of it)."),
    target: str = TargetOption,
    to: str | None = typer.Option(None, "--to", help="New volume POOL/NAME (or NAME with --pool)."),
    to_file: Path | None = typer.Option(None, "--to-file", help="Restore into a new image file instead."),
    to_dir: Path | None = typer.Option(None, "--to-dir", help="Restore a tree backup into a new directory."),
    pool: str | None = PoolOption,
    parallel: int = typer.Option(16, "--parallel", help="Concurrent chunk downloads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    password_file: Path | None = PasswordFileOption,
    home: Path | None = HomeOption,
) -> None:
    """Restore a backup into a new volume (created here) or a new image file."""
    from statehold.backup.volumes import restore_volume

    with failures():
        if sum(x is not None for x in (to, to_file, to_dir)) != 1:
            raise InvalidArgument("give exactly one of --to POOL/NAME, --to-file PATH or --to-dir DIR")
        if parallel < 1:
            raise InvalidArgument("--parallel must be at least 1")
        repo = open_repository(ctx, home, target, password_file)
        bid = repo.resolve(backup)
        if to_dir is not None:
            from statehold.backup.tree import restore_tree

            restore_tree(repo, bid, to_dir.resolve(), parallel=parallel)
            done("backup", bid, f"restored to {to_dir.resolve()}")
            return
        if to_file is not None:
            with _bar(f"restore {bid}", not quiet) as bar:
                restore_image(repo, bid, to_file.resolve(), parallel=parallel, progress=bar)
            done("backup", bid, f"restored to {to_file.resolve()}")
            return
    pool_name, name = _ref(pool, to or "")
    with node(ctx, home) as n:
        p = pick_pool(n, pool_name)
        with _bar(f"restore {bid}", not quiet) as bar:
            vol = restore_volume(repo, bid, p, name, progress=bar, parallel=parallel)
    done("volume", vol.id, f"restored from backup {bid}")


def register(app: typer.Typer) -> None:
    """Add ``statehold backup ...`` and ``statehold restore`` to app (``statehold target ...``:
    :mod:`statehold.cli.targets`)."""
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore_cmd)
