"""``statehold demo`` (what ``make demo`` runs): the engine's whole story on one host.

On the embedded default (a file-backed pool under the home directory) it creates a
volume, mounts it, writes data, snapshots it, modifies it, clones the snapshot, shows the
clone holds the old bytes (checksums), grows the volume online, measures what changed
between two snapshots, backs the volume up into a directory target (full, then
incremental after a change), restores the newest backup into a new volume and checks its
bytes, verifies the repository deeply, prints a summary table, then unmounts and detaches
everything it attached, the pool's own disk image included (the pool is exported). Running
it again imports the pool from its image, removes the objects of the earlier run and
starts over; the repository keeps the last two backups.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from statehold.cli.context import home_dir
from statehold.cli.output import HomeOption, console, failures, human, size_arg
from statehold.engine.types import FsType, PoolSpec, Source, SourceKind

if TYPE_CHECKING:
    from statehold.engine.node import Node
    from statehold.engine.pool import Pool

VOLUME = "demo-data"
CLONE = "demo-clone"
RESTORED = "demo-restored"
DEMO_PASSWORD = "statehold-demo"  # a demo repository only: real targets take a secret password
SNAP_BEFORE = "demo-before"
SNAP_AFTER = "demo-after"
DATA_FILE = "data.bin"
DATA_SIZE = 32 * 1024 * 1024


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the summary table)."""
    typer.echo(f"==> {message}", err=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes durably (fsync) and return their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


@dataclass(slots=True)
class Run:
    """What the demo attached (to undo) and what it found (to print)."""

    pool: Pool
    mounts: list[tuple[str, Path]] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def fact(self, step: str, result: str, ok: bool = True) -> None:
        self.rows.append((step, result, "ok" if ok else "FAILED"))


def open_pool(n: Node, name: str, home: Path, image_size: int) -> Pool:
    """Reuse the demo pool: registered here, or exported by an earlier run (import it from
    its image: the metadata lives inside), or else create it on a sparse image."""
    for p in n.pools():
        if p.name == name:
            progress(f"reusing pool {name} at {p.mountpoint}")
            return p
    image = home / "disks" / f"{name}-0.img"
    if image.exists():
        progress(f"importing pool {name} from {image}")
        return n.import_pool([str(image)], name=name)
    progress(f"creating pool {name} on {image} ({human(image_size)}, sparse)")
    return n.create_pool(PoolSpec(name=name, images=(str(image),), image_size=image_size))


def clear_previous(p: Pool) -> None:
    """Remove what an earlier (possibly interrupted) run left, so names can be reused."""
    names = {v.name: v for v in p.list_volumes()}
    for vol in (RESTORED, CLONE, VOLUME):
        if vol in names:
            for target in names[vol].mounts:
                p.unmount(vol, Path(target))
            p.detach(vol)
            p.delete_volume(vol)
    for snap in p.list_snapshots():
        # the backup parents of the old demo-data too: a new volume starts a new lineage
        if snap.name in (SNAP_BEFORE, SNAP_AFTER) or snap.source_volume == VOLUME:
            p.delete_snapshot(snap.name)


def story(run: Run, mnt: Path, volume_size: int) -> None:
    """The demo itself; every fact it prints is checked, not assumed."""
    from statehold.engine.extents import changed_ranges, total

    p = run.pool
    progress(f"creating volume {VOLUME} ({human(volume_size)}, xfs)")
    p.create_volume(VOLUME, volume_size, fs=FsType.XFS)
    data_dir = mnt / VOLUME
    data_dir.mkdir(parents=True, exist_ok=True)
    progress(f"mounting {VOLUME} at {data_dir}")
    vol = p.mount(VOLUME, data_dir)
    run.mounts.append((VOLUME, data_dir))
    run.fact("volume", f"{vol.id} {human(vol.size)} on {vol.device}")

    progress(f"writing {human(DATA_SIZE)} of random data")
    original = write_file(data_dir / DATA_FILE, DATA_SIZE)
    run.fact("write", f"{DATA_FILE} sha256 {original[:16]}")

    t0 = time.perf_counter()
    p.create_snapshot(VOLUME, SNAP_BEFORE)
    took = (time.perf_counter() - t0) * 1000
    progress(f"snapshot {SNAP_BEFORE} taken (fsfreeze + reflink) in {took:.1f} ms")
    run.fact("snapshot", f"{SNAP_BEFORE} in {took:.1f} ms")

    progress("modifying the volume (rewriting the first MiB)")
    modified = rewrite_first_mib(data_dir / DATA_FILE)
    run.fact("modify", f"{DATA_FILE} sha256 {modified[:16]}", ok=modified != original)

    progress(f"cloning {SNAP_BEFORE} into {CLONE}")
    p.create_volume(CLONE, vol.size, fs=FsType.XFS, source=Source(SourceKind.SNAPSHOT, SNAP_BEFORE))
    clone_dir = mnt / CLONE
    clone_dir.mkdir(parents=True, exist_ok=True)
    p.mount(CLONE, clone_dir)
    run.mounts.append((CLONE, clone_dir))
    cloned = sha256(clone_dir / DATA_FILE)
    same = cloned == original
    run.fact("clone", f"{CLONE} sha256 {cloned[:16]} {'==' if same else '!='} original", ok=same)

    before = os.statvfs(data_dir)
    grown = p.expand(VOLUME, vol.size * 2)
    after = os.statvfs(data_dir)
    fs_before, fs_after = before.f_blocks * before.f_frsize, after.f_blocks * after.f_frsize
    progress(f"expanded {VOLUME} to {human(grown.volume.size)} ({grown.grow.value})")
    run.fact(
        "expand",
        f"{human(vol.size)} -> {human(grown.volume.size)}, fs {human(fs_before)} -> "
        f"{human(fs_after)} ({grown.grow.value})",
        ok=fs_after > fs_before and (data_dir / DATA_FILE).exists(),
    )

    p.create_snapshot(VOLUME, SNAP_AFTER)
    old, new = p.get_snapshot(SNAP_BEFORE).path, p.get_snapshot(SNAP_AFTER).path
    changed = total(changed_ranges(old, new))
    progress(f"changed-extent diff {SNAP_BEFORE} -> {SNAP_AFTER}: {human(changed)}")
    run.fact("diff", f"{human(changed)} changed of {human(grown.volume.size)}",
             ok=0 < changed < grown.volume.size)


def rewrite_first_mib(path: Path) -> str:
    with open(path, "r+b") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    return sha256(path)


def backups(run: Run, mnt: Path, target: Path) -> None:
    """Full and incremental backup to a directory target, restore, deep verify."""
    from statehold.backup import collecting, retention
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.backup.verifying import verify
    from statehold.backup.volumes import backup_volume, restore_volume
    from statehold.errors import NotFound

    p = run.pool
    store = DirectoryStore(target)
    try:
        repo = Repository.open(store, DEMO_PASSWORD)
    except NotFound:
        progress(f"initialising the backup repository at {target}")
        repo = Repository.init(store, DEMO_PASSWORD)
    data_dir = mnt / VOLUME

    full = backup_volume(repo, p, VOLUME).manifest
    progress(f"backup {full.backup_id}: read {human(full.stats.bytes_read)}, "
             f"stored {human(full.stats.stored_new)}")
    run.fact("backup", f"{full.backup_id} full: read {human(full.stats.bytes_read)}, "
             f"stored {human(full.stats.stored_new)}", ok=full.parent is None)

    current = rewrite_first_mib(data_dir / DATA_FILE)
    incr = backup_volume(repo, p, VOLUME).manifest
    progress(f"backup {incr.backup_id}: read {human(incr.stats.bytes_read)} (incremental)")
    run.fact("incremental", f"{incr.backup_id}: read {human(incr.stats.bytes_read)}, "
             f"stored {human(incr.stats.stored_new)}",
             ok=incr.parent == full.backup_id and incr.stats.bytes_read < full.stats.bytes_read // 4)

    restore_volume(repo, incr.backup_id, p, RESTORED)
    restored_dir = mnt / RESTORED
    restored_dir.mkdir(parents=True, exist_ok=True)
    p.mount(RESTORED, restored_dir)
    run.mounts.append((RESTORED, restored_dir))
    got = sha256(restored_dir / DATA_FILE)
    progress(f"restored {incr.backup_id} into {RESTORED}")
    run.fact("restore", f"{RESTORED} sha256 {got[:16]} {'==' if got == current else '!='} volume",
             ok=got == current)

    collecting.prune(repo, retention.Policy(keep_last=2), volume=f"{p.name}/{VOLUME}")
    collecting.gc(repo, grace=0)
    report = verify(repo, deep=True)
    run.fact("verify", f"deep: {report.backups} backups, {report.chunks} chunks, "
             f"{human(report.bytes_checked)} checked, {len(report.problems)} problems", ok=report.ok)


def release(run: Run) -> None:
    """Unmount and detach what this run attached, newest first."""
    p = run.pool
    while run.mounts:
        name, target = run.mounts.pop()
        progress(f"unmounting and detaching {name}")
        p.unmount(name, target)
        p.detach(name)


def summary(run: Run) -> None:
    table = Table(title="Statehold demo", title_justify="left")
    table.add_column("step")
    table.add_column("result")
    table.add_column("check")
    for row in run.rows:
        table.add_row(*row)
    console().print(table)


def demo(
    ctx: typer.Context,
    home: Path | None = HomeOption,
    pool: str = typer.Option("demo", "--pool", help="Pool to use or create."),
    image_size: str = typer.Option("4Gi", "--image-size", help="Sparse pool image size."),
    volume_size: str = typer.Option("512Mi", "--volume-size", help="Size of the demo volume."),
) -> None:
    """Run the engine's story end to end on a file-backed pool, then detach everything."""
    from statehold.engine.node import Node

    with failures():
        vsize = size_arg(volume_size)
        isize = size_arg(image_size)
        root = home_dir(ctx, home, create=True)
        n = Node(root)
        try:
            p = open_pool(n, pool, root, isize)
            run = Run(p)
            try:
                clear_previous(p)
                story(run, root / "mnt", vsize)
                backups(run, root / "mnt", root / "backups" / "demo")
            finally:
                try:
                    release(run)
                finally:
                    n.export_pool(pool)
                    progress(f"pool {pool} exported (unmounted, image detached); "
                             "the next run imports it")
        finally:
            n.close()
    summary(run)
    if any(check != "ok" for _, _, check in run.rows):
        typer.echo("error: a demo check failed (see the table)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``statehold demo`` to app."""
    app.command("demo")(demo)
