"""``statehold shared ...``: volumes on a shared root, and Local PV discovery.

Commands work on a host-based root (``--root /mnt/share``) or a native share
(``--source host:/vol --fs-type glusterfs``, mounted under the Statehold home)::

    statehold shared get volumes --root /mnt/share [-o json]
    statehold shared create NAME --size 10Gi --root /mnt/share [--policy archive] [--enforce]
    statehold shared expand NAME --size 20Gi --root /mnt/share
    statehold shared usage NAME --root /mnt/share
    statehold shared delete NAME --root /mnt/share
    statehold shared snapshot VOLUME SNAP --root /mnt/share
    statehold shared discover --node n1 --dir /mnt/disks [--storage-class local-disks]
    statehold shared monitor        # OverSize Warning events on PVs of over-size volumes
    statehold shared backup NAME --root /mnt/share --target T [--no-snapshot]
    statehold shared restore BACKUP NAME --root /mnt/share --target T [--size 10Gi]

Errors go to stderr with the exit code of the CLI's one table (``statehold.cli.output``:
2 bad input, 3 not found, 4 already exists, ...). ``usage`` also exits 4 when a volume
holds more than its size (a report, not an error).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from statehold.backup.repository import Repository
from statehold.cli.context import open_repository, settings
from statehold.cli.output import failures
from statehold.errors import InvalidArgument, NotFound, StateholdError
from statehold.kube import connect as kube_connect
from statehold.shared.backups import backup_volume, restore_volume
from statehold.shared.discovery import LABEL_NODE, LABEL_OWNER, OWNER, Discoverer
from statehold.shared.ids import make_id
from statehold.shared.names import format_size, parse_size
from statehold.shared.registry import NATIVE, RootSpec
from statehold.shared.root import SharedRoot
from statehold.shared.service import SharedVolumes
from statehold.shared.share import ShareMounter
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import DeletionPolicy, VolumeEvent

RootOpt = typer.Option(None, "--root", help="host-based shared root (an existing directory)")
SourceOpt = typer.Option(None, "--source", help="native share, server:/path")
FsOpt = typer.Option("glusterfs", "--fs-type", help="glusterfs, nfs, nfs4 or cephfs")
OptionsOpt = typer.Option("", "--mount-options", help="comma-separated mount options")
OutputOpt = typer.Option("table", "-o", "--output", help="table or json")
PasswordFileOpt = typer.Option(None, "--password-file",
                               help="repository password file (default: $STATEHOLD_REPO_PASSWORD)")


class KubePvApi:
    """The discovery's :class:`~statehold.shared.discovery.PvApi` over the kube facade."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def list_pvs(self, node: str) -> list[dict[str, Any]]:
        from statehold.kube.kinds import PV

        objs: list[dict[str, Any]] = self.kube.list(PV, label_selector={LABEL_OWNER: OWNER, LABEL_NODE: node})
        return objs

    def create_pv(self, manifest: dict[str, Any]) -> None:
        self.kube.create(manifest)

    def delete_pv(self, name: str) -> None:
        from statehold.kube.kinds import PV

        self.kube.delete(PV, name)

    def warn(self, pv: str, message: str) -> None:
        from statehold.kube.kinds import PV

        try:
            obj = self.kube.get(PV, pv)
        except NotFound:
            return
        self.kube.record_event(obj, type="Warning", reason="DiskMissing", message=message,
                               component="statehold-local-discovery")


def report_oversize(volumes: SharedVolumes, kube: Any) -> list[tuple[str, VolumeEvent]]:
    """Measure every shared volume this host knows; a Warning ``OverSize`` Event on the PV
    (found by its CSI volume handle) for each one holding more than its size. Returns
    (volume id, event) pairs. The periodic half of accounting: NodeGetVolumeStats reports
    the condition to kubelet, this tells the humans."""
    from statehold.kube.kinds import PV

    handles = {pv.get("spec", {}).get("csi", {}).get("volumeHandle"): pv for pv in kube.list(PV)}
    found: list[tuple[str, VolumeEvent]] = []
    for volume_id, event in volumes.oversize():
        found.append((volume_id, event))
        pv = handles.get(volume_id)
        if pv is not None:
            kube.record_event(pv, type="Warning", reason=event.reason, message=event.message,
                              component="statehold-shared")
    return found


def _repo(ctx: typer.Context, target: str, password_file: Path | None) -> Repository:
    """The repository of a backup target (``statehold target add``), opened the CLI's one way."""
    return open_repository(ctx, None, target, password_file)


def _open_keyed(ctx: typer.Context, root: Path | None, source: str | None, fs_type: str,
                options: str) -> tuple[SharedRoot, str]:
    params = {"sharedRoot": str(root)} if root else {}
    if source:
        params.update(source=source, fsType=fs_type, mountOptions=options)
    return _open(ctx, root, source, fs_type, options), RootSpec.from_parameters(params).key


def _open(ctx: typer.Context, root: Path | None, source: str | None, fs_type: str,
          options: str) -> SharedRoot:
    params = {"sharedRoot": str(root)} if root else {}
    if source:
        params.update(source=source, fsType=fs_type, mountOptions=options)
    spec = RootSpec.from_parameters(params)
    if spec.style == NATIVE:
        assert spec.share is not None
        home = settings(ctx).home
        return SharedRoot(ShareMounter(home / "shared").acquire(spec.share, "cli"))
    assert spec.path is not None
    return SharedRoot(spec.path)


def _emit(rows: list[dict[str, Any]], output: str, columns: list[str]) -> None:
    if output == "json":
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    widths = {c: max([len(c), *(len(str(r.get(c.lower(), ""))) for r in rows)]) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        typer.echo("  ".join(str(row.get(c.lower(), "")).ljust(widths[c]) for c in columns))


def register(app: typer.Typer) -> None:
    shared = typer.Typer(help="Shared-filesystem volumes and Local PV discovery.", no_args_is_help=True)
    app.add_typer(shared, name="shared")

    @shared.command("get")
    def get(ctx: typer.Context, what: str = typer.Argument("volumes", help="volumes or snapshots"),
            root: Path | None = RootOpt, source: str | None = SourceOpt, fs_type: str = FsOpt,
            mount_options: str = OptionsOpt, output: str = OutputOpt) -> None:
        """List the volumes (or snapshots) of a shared root."""
        with failures():
            r = _open(ctx, root, source, fs_type, mount_options)
            if what == "snapshots":
                rows = [{**asdict(s), "size": format_size(s.size)} for s in SnapshotStore(r).list()]
                _emit(rows, output, ["NAME", "VOLUME", "SIZE", "COPY_METHOD", "CREATED"])
                return
            rows = [{**asdict(v), "size": format_size(v.size)} for v in r.list_volumes()]
            _emit(rows, output, ["NAME", "SIZE", "POLICY", "QUOTA", "PATH"])

    @shared.command("create")
    def create(ctx: typer.Context,
               name: str, size: str = typer.Option(..., "--size"), root: Path | None = RootOpt,
               source: str | None = SourceOpt, fs_type: str = FsOpt, mount_options: str = OptionsOpt,
               policy: str = typer.Option("delete", "--policy", help="delete, retain or archive"),
               enforce: bool = typer.Option(False, "--enforce", help="fail unless a quota enforces the size"),
               ) -> None:
        """Create a volume directory with a size limit."""
        with failures():
            try:
                pol = DeletionPolicy(policy)
            except ValueError:
                raise InvalidArgument(f"--policy {policy!r} is not delete, retain or archive") from None
            vol = _open(ctx, root, source, fs_type, mount_options).create_volume(
                name, parse_size(size), policy=pol, enforce=enforce)
            typer.echo(f"volume {vol.name} created at {vol.path} ({format_size(vol.size)}, {vol.quota})")

    @shared.command("expand")
    def expand(ctx: typer.Context,
               name: str, size: str = typer.Option(..., "--size"), root: Path | None = RootOpt,
               source: str | None = SourceOpt, fs_type: str = FsOpt, mount_options: str = OptionsOpt) -> None:
        """Raise a volume's size limit (online)."""
        with failures():
            vol = _open(ctx, root, source, fs_type, mount_options).expand_volume(name, parse_size(size))
            typer.echo(f"volume {vol.name} is now {format_size(vol.size)}")

    @shared.command("usage")
    def usage(ctx: typer.Context, name: str, root: Path | None = RootOpt, source: str | None = SourceOpt,
              fs_type: str = FsOpt, mount_options: str = OptionsOpt) -> None:
        """How full a volume is; exit code 4 when it holds more than its size."""
        with failures():
            u = _open(ctx, root, source, fs_type, mount_options).usage(name)
        typer.echo(f"{name}: {format_size(u.used)} of {format_size(u.size)} used, {u.inodes} inodes"
                   f"{' (OVER SIZE)' if u.abnormal else ''}")
        if u.abnormal:
            raise typer.Exit(4)

    @shared.command("delete")
    def delete(ctx: typer.Context, name: str, root: Path | None = RootOpt, source: str | None = SourceOpt,
               fs_type: str = FsOpt, mount_options: str = OptionsOpt) -> None:
        """Delete a volume according to its deletion policy."""
        with failures():
            where = _open(ctx, root, source, fs_type, mount_options).delete_volume(name)
        typer.echo(f"volume {name} deleted" + (f"; data kept at {where}" if where else ""))

    @shared.command("snapshot")
    def snapshot(ctx: typer.Context,
                 volume: str, name: str, root: Path | None = RootOpt, source: str | None = SourceOpt,
                 fs_type: str = FsOpt, mount_options: str = OptionsOpt) -> None:
        """Snapshot a volume (reflink copy where the filesystem supports it)."""
        with failures():
            snap = SnapshotStore(_open(ctx, root, source, fs_type, mount_options)).create(volume, name)
        typer.echo(f"snapshot {snap.name} of {volume} created ({snap.copy_method})")

    @shared.command("backup")
    def backup(ctx: typer.Context,
               name: str, target: str = typer.Option(..., "--target", help="backup target name"),
               root: Path | None = RootOpt, source: str | None = SourceOpt, fs_type: str = FsOpt,
               mount_options: str = OptionsOpt,
               snapshot: bool = typer.Option(True, "--snapshot/--no-snapshot",
                                             help="read a snapshot (default) or the live tree"),
               password_file: Path | None = PasswordFileOpt) -> None:
        """Back up a shared volume (file-tree mode) to a backup target."""
        with failures():
            r, key = _open_keyed(ctx, root, source, fs_type, mount_options)
            m = backup_volume(_repo(ctx, target, password_file), r, name, volume_key=make_id(key, name),
                              snapshot=snapshot)
        typer.echo(f"backup {m.backup_id} of {m.volume}: {format_size(m.size)}"
                   f"{', incremental from ' + m.parent if m.parent else ''}")

    @shared.command("restore")
    def restore(ctx: typer.Context, backup_id: str, name: str, target: str = typer.Option(..., "--target"),
                root: Path | None = RootOpt, source: str | None = SourceOpt, fs_type: str = FsOpt,
                mount_options: str = OptionsOpt, size: str | None = typer.Option(None, "--size"),
                password_file: Path | None = PasswordFileOpt) -> None:
        """Restore a file-tree backup into a new shared volume."""
        with failures():
            r, _key = _open_keyed(ctx, root, source, fs_type, mount_options)
            repo = _repo(ctx, target, password_file)
            vol = restore_volume(repo, repo.resolve(backup_id), r, name,
                                 size=parse_size(size) if size else None)
        typer.echo(f"volume {vol.name} restored at {vol.path} ({format_size(vol.size)})")

    @shared.command("monitor")
    def monitor(ctx: typer.Context, kubeconfig: str | None = typer.Option(None, "--kubeconfig"),
                node: str = typer.Option("", "--node", help="this node's name (for the record)")) -> None:
        """One pass: Warning events on the PVs of shared volumes that exceed their size."""
        with failures():
            found = report_oversize(SharedVolumes(settings(ctx).home), kube_connect(kubeconfig))
        for volume_id, event in found:
            typer.echo(f"{volume_id}: {event.message}")

    @shared.command("discover")
    def discover(ctx: typer.Context,
                 node: str = typer.Option(..., "--node"), directory: Path = typer.Option(..., "--dir"),
                 storage_class: str = typer.Option("statehold-local-disks", "--storage-class"),
                 kubeconfig: str | None = typer.Option(None, "--kubeconfig"),
                 interval: float = typer.Option(0.0, "--interval",
                                                help="repeat every N seconds (0: one pass)")) -> None:
        """Offer disks under --dir as Local PVs and recycle Released ones (one pass, or a loop)."""
        with failures():
            discoverer = Discoverer(KubePvApi(kube_connect(kubeconfig)), node=node,
                                    directory=directory, storage_class=storage_class)
        while True:
            if interval <= 0:
                with failures():
                    done = discoverer.run_once()
            else:
                try:
                    done = discoverer.run_once()
                except StateholdError as exc:
                    typer.echo(f"error: {exc}", err=True)  # a loop survives a bad pass
                    done = []
            for action in done:
                typer.echo(f"{action.kind} {action.pv or (action.disk.path if action.disk else '')}")
            if interval <= 0:
                return
            time.sleep(interval)
