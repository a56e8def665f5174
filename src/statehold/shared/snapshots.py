"""Snapshots of shared volumes: a copy of the volume's directory at one moment.

The copy is a btrfs read-only subvolume snapshot when the root is a btrfs qgroup root,
otherwise ``cp -a --reflink=always`` where the filesystem shares extents (XFS with
reflink, btrfs) and a plain ``cp -a`` elsewhere (GlusterFS, NFS); the method is recorded
and reported because it decides what a snapshot costs. Shared filesystems cannot be
frozen (``fsfreeze`` does not work on FUSE or NFS), so a snapshot of a volume that is being
written is consistent per file, not across files: quiesce the application first.
Snapshots live under ``.statehold/snapshots`` where no pod mounts them; they are only ever
exposed through read-only bind mounts, and keep the volume's exact modes and owners so a
restored clone is the volume as it was.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from statehold.errors import AlreadyExists, NotFound, StateholdError
from statehold.shared import metadata as md
from statehold.shared.copying import copy_tree
from statehold.shared.names import validate_name
from statehold.shared.root import SharedRoot
from statehold.shared.types import CopyMethod, SharedSnapshot


class SnapshotStore:
    """The snapshots of one :class:`SharedRoot`."""

    def __init__(self, root: SharedRoot) -> None:
        self.root = root
        self.dir = root.meta / "snapshots"

    def _sidecar(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _read(self, name: str) -> SharedSnapshot | None:
        data = md.read_json(self._sidecar(name))
        if data is None:
            return None
        return replace(md.snapshot_from_json(data), path=self.dir / name)  # this node's view

    def create(self, volume: str, name: str) -> SharedSnapshot:
        """Snapshot ``volume`` as ``name``; the same pair again returns the existing one."""
        validate_name(name, what="snapshot")
        with self.root.lock():
            existing = self._read(name)
            if existing is not None:
                if existing.volume != volume:
                    raise AlreadyExists(f"snapshot {name} belongs to volume {existing.volume}")
                if existing.ready:
                    return existing
                self._remove(existing)
            vol = self.root.get_volume(volume)
            path = self.dir / name
            snap = SharedSnapshot(name=name, volume=volume, path=path, size=vol.size,
                                  copy_method=CopyMethod.COPY, ready=False,
                                  created=datetime.now(UTC).isoformat())
            self.root.write_meta(self._sidecar(name), md.snapshot_to_json(snap))
            try:
                method = self.root.enforcer.snapshot(vol.path, path, readonly=True)
                if method is None:
                    staging = self.root.staging("snapshot", name)
                    method = copy_tree(vol.path, staging, reflink=self.root.reflink,
                                       plain=self.root.traits.smb)
                    os.rename(staging, path)
                snap = replace(snap, copy_method=method, ready=True)
                self.root.write_meta(self._sidecar(name), md.snapshot_to_json(snap))
            except BaseException:
                with contextlib.suppress(StateholdError, OSError):
                    self._remove(snap)
                raise
            return snap

    def get(self, name: str) -> SharedSnapshot:
        validate_name(name, what="snapshot")
        snap = self._read(name)
        if snap is None or not snap.ready:
            raise NotFound(f"snapshot {name} not found in {self.root.path}")
        return snap

    def list(self, volume: str | None = None) -> list[SharedSnapshot]:
        out = []
        for entry in md.json_names(self.dir):
            snap = self._read(entry)
            if snap is not None and snap.ready and (volume is None or snap.volume == volume):
                out.append(snap)
        return out

    def delete(self, name: str) -> None:
        """Remove the snapshot; a missing one is already deleted."""
        validate_name(name, what="snapshot")
        with self.root.lock():
            snap = self._read(name)
            if snap is not None:
                self._remove(snap)

    def _remove(self, snap: SharedSnapshot) -> None:
        self.root.enforcer.remove_dir(snap.path)
        self.root.clear_staging("snapshot", snap.name)
        md.remove_json(self._sidecar(snap.name))
