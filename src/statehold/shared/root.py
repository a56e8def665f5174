"""A shared root: the directory on a shared filesystem that holds the volumes.

Every change follows one pattern, under the root's lock (see ``metadata.locked``): record
intent in the sidecar (state ``creating`` / ``deleting``), act on the filesystem, record
the result. A crash in between leaves a state that the next call for the same name (or
:meth:`SharedRoot.reconcile`) finishes or undoes, so every call is safe to repeat.
A failed create rolls back what it did: nothing half-created stays behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from statehold.engine.mounts import mount_of, mounts
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    StateholdError,
    Unavailable,
)
from statehold.shared import metadata as md
from statehold.shared.copying import copy_into, copy_tree, reflink_supported, remove_tree
from statehold.shared.names import format_size, validate_name
from statehold.shared.quota import Enforcer, detect
from statehold.shared.traits import RootTraits, probe
from statehold.shared.types import (
    CopyMethod,
    DeletionPolicy,
    QuotaKind,
    SharedVolume,
    Source,
    SourceKind,
    Usage,
    VolumeEvent,
    VolumeState,
)

log = logging.getLogger("statehold.shared")
PROJECT_ID_BASE = 100_000
EventHook = Callable[[VolumeEvent], None]
Populate = Callable[[Path], object]


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


class SharedRoot:
    """The volumes under one directory. Cheap to construct; holds no open handles."""

    def __init__(self, path: Path, *, enforcer: Enforcer | None = None,
                 on_event: EventHook | None = None) -> None:
        if not path.is_absolute():
            raise InvalidArgument(f"shared root {path} must be an absolute path")
        if not path.is_dir():
            raise FailedPrecondition(f"shared root {path} does not exist or is not a directory "
                                     "(is the share mounted on this node?)")
        self.path = path
        self.meta = md.meta_dir(path)
        try:
            for sub in ("volumes", "snapshots", "archive", "tmp"):
                (self.meta / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot prepare {self.meta}: {exc}") from exc
        entries = mounts()
        self.enforcer = enforcer if enforcer is not None else detect(path, entries)
        self.traits: RootTraits = probe(path, self.meta / "tmp", mount_of(path.resolve(), entries))
        self.on_event = on_event
        self._reflink: bool | None = None

    # -- layout ---------------------------------------------------------------------------
    def volume_path(self, name: str) -> Path:
        return self.path / validate_name(name)

    def _sidecar(self, name: str) -> Path:
        return self.meta / "volumes" / f"{name}.json"

    def _read(self, name: str) -> SharedVolume | None:
        data = md.read_json(self._sidecar(name))
        if data is None:
            return None
        # The stored path is where the creating node saw it; each node mounts the share at
        # its own place, so the path is always derived from this root.
        return replace(md.volume_from_json(data), path=self.path / name)

    def _write(self, vol: SharedVolume) -> None:
        self.write_meta(self._sidecar(vol.name), md.volume_to_json(vol))

    def write_meta(self, path: Path, data: dict[str, object]) -> None:
        """Replace a metadata file of this root the way its filesystem allows (see traits)."""
        md.write_json(path, data, atomic_replace=self.traits.atomic_replace)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with md.locked(self.path, shared_locks=self.traits.shared_locks):
            yield

    def staging(self, kind: str, name: str) -> Path:
        """A fresh path under ``.statehold/tmp`` for one attempt at building ``name``.

        Unique per attempt ('@' cannot occur in names): a copy tool orphaned by a killed
        process may still be writing into an earlier attempt's path, never into this one."""
        self.clear_staging(kind, name)
        return self.meta / "tmp" / f"{kind}-{name}@{os.getpid()}.{time.time_ns()}"

    def clear_staging(self, kind: str, name: str) -> None:
        for leftover in (self.meta / "tmp").glob(f"{kind}-{name}@*"):
            remove_tree(leftover)

    @property
    def reflink(self) -> bool:
        if self._reflink is None:
            self._reflink = reflink_supported(self.meta / "tmp")
        return self._reflink

    # -- volumes --------------------------------------------------------------------------
    def create_volume(self, name: str, size: int, *, policy: DeletionPolicy = DeletionPolicy.DELETE,
                      enforce: bool = False, source: Source | None = None,
                      populate: Populate | None = None) -> SharedVolume:
        """Create ``<root>/<name>`` with a ``size``-byte limit; same spec again returns it.

        ``enforce`` demands a kernel-enforced limit: FailedPrecondition when the root offers
        none (checked before anything is written). A source clones a volume or snapshot
        (OutOfRange if ``size`` is smaller than the source's; NotFound if it is missing).
        A ``backup`` source needs ``populate``: it is called with a path that does not exist
        yet and must leave the volume's content there (a restore); a failure undoes it all.
        """
        validate_name(name)
        if size <= 0:
            raise InvalidArgument(f"size must be positive, got {size}")
        if enforce and not self.enforcer.enforcing:
            raise FailedPrecondition(
                f"the StorageClass demands enforced sizes but {self.path} offers no quota "
                "(needs XFS mounted with prjquota, or btrfs with quotas enabled)"
            )
        with self.lock():
            existing = self._read(name)
            if existing is not None:
                if existing.state == VolumeState.READY:
                    if (existing.size, existing.policy, existing.source) == (size, policy, source):
                        return existing
                    raise AlreadyExists(f"volume {name} exists with size {existing.size} "
                                        f"policy {existing.policy} source {existing.source}")
                if existing.state == VolumeState.RETAINED:
                    raise AlreadyExists(f"name {name} is held by a retained volume's data")
                self._undo_or_finish(existing)
            path = self.path / name
            if os.path.lexists(path):
                raise FailedPrecondition(self._taken_message(name))
            if source is not None and source.kind == SourceKind.BACKUP:
                if populate is None:
                    raise InvalidArgument("a volume restored from a backup needs its content")
                src_path, src_size = None, 0
            else:
                src_path, src_size = self._source(source) if source is not None else (None, 0)
            if source is not None and size < src_size:
                raise OutOfRange(f"size {size} is smaller than the source's {src_size}")
            vol = SharedVolume(
                name=name, path=path, size=size, policy=policy, state=VolumeState.CREATING,
                quota=self.enforcer.kind, source=source, created=datetime.now(UTC).isoformat(),
                project_id=self._next_project_id() if self.enforcer.kind == QuotaKind.XFS_PROJECT else None,
            )
            self._write(vol)
            try:
                if populate is not None and source is not None and source.kind == SourceKind.BACKUP:
                    self._populate(vol, populate)
                    method = None
                else:
                    method = self._materialise(vol, src_path)
                self.enforcer.assign(path, vol.project_id)
                self.enforcer.apply(path, size, vol.project_id)
                vol = replace(vol, state=VolumeState.READY, copy_method=method)
                self._write(vol)
            except BaseException:
                self._rollback(vol)
                raise
        log.info("volume created name=%s size=%s quota=%s", name, format_size(size), vol.quota)
        return vol

    def _materialise(self, vol: SharedVolume, src_path: Path | None) -> CopyMethod | None:
        if src_path is None:
            self.enforcer.make_dir(vol.path)
            return None
        method = self.enforcer.snapshot(src_path, vol.path, readonly=False)
        if method is not None:
            return method
        staging = self.staging("volume", vol.name)
        method = copy_tree(src_path, staging, reflink=self.reflink, plain=self.traits.smb)
        os.rename(staging, vol.path)
        return method

    def _populate(self, vol: SharedVolume, populate: Populate) -> None:
        """Fill a staging path, then make it the volume: a rename where the volume is a plain
        directory; a copy into the new subvolume where it must be one (btrfs qgroups)."""
        staging = self.staging("volume", vol.name)
        populate(staging)
        if self.enforcer.kind == QuotaKind.BTRFS_QGROUP:
            self.enforcer.make_dir(vol.path)
            copy_into(staging, vol.path, reflink=self.reflink, plain=self.traits.smb)
            remove_tree(staging)
        else:
            os.rename(staging, vol.path)

    def _source(self, source: Source) -> tuple[Path, int]:
        if source.kind == SourceKind.VOLUME:
            vol = self.get_volume(source.name)
            return vol.path, vol.size
        snap_name = validate_name(source.name, what="snapshot")
        data = md.read_json(self.meta / "snapshots" / f"{snap_name}.json")
        if data is None or not data.get("ready", True):
            raise NotFound(f"snapshot {source.name} not found in {self.path}")
        return self.meta / "snapshots" / snap_name, md.snapshot_from_json(data).size

    def _rollback(self, vol: SharedVolume) -> None:
        with contextlib.suppress(StateholdError, OSError):
            self.enforcer.release(vol.path, vol.project_id)
        with contextlib.suppress(StateholdError, OSError):
            self.enforcer.remove_dir(vol.path)
        with contextlib.suppress(StateholdError, OSError):
            self.clear_staging("volume", vol.name)
        with contextlib.suppress(StateholdError):
            md.remove_json(self._sidecar(vol.name))

    def _taken_message(self, name: str) -> str:
        path = self.path / name
        if not self.traits.case_sensitive:
            with contextlib.suppress(OSError):
                same = [p.name for p in self.path.iterdir() if p.name.lower() == name and p.name != name]
                if same:
                    return (f"{path} is taken: names on {self.path} are case-insensitive and "
                            f"{same[0]!r} there is the same name; not touching it")
        return f"{path} exists but is not a Statehold volume; not touching it"

    def _undo_or_finish(self, vol: SharedVolume) -> None:
        """A crash left ``vol`` half-created (undo) or half-deleted (finish)."""
        if vol.state == VolumeState.CREATING:
            self._rollback(vol)
        elif vol.state == VolumeState.DELETING:
            self._finish_delete(vol)

    def _next_project_id(self) -> int:
        used = {v.project_id for v in self._all() if v.project_id is not None}
        return max(used, default=PROJECT_ID_BASE - 1) + 1

    def _all(self) -> list[SharedVolume]:
        out = []
        for name in md.json_names(self.meta / "volumes"):
            vol = self._read(name)
            if vol is not None:
                out.append(vol)
        return out

    def get_volume(self, name: str) -> SharedVolume:
        validate_name(name)
        vol = self._read(name)
        if vol is None or vol.state != VolumeState.READY:
            raise NotFound(f"volume {name} not found in {self.path}")
        return vol

    def exists(self, name: str) -> bool:
        """Whether anything of the name is recorded (ready, half-made, half-deleted, retained)."""
        validate_name(name)
        return self._read(name) is not None

    def list_volumes(self) -> list[SharedVolume]:
        return [v for v in self._all() if v.state == VolumeState.READY]

    def delete_volume(self, name: str) -> Path | None:
        """Apply the volume's deletion policy; a missing volume is already deleted.

        Returns where the data went: the archive path, the retained directory, or None.
        """
        validate_name(name)
        with self.lock():
            vol = self._read(name)
            if vol is None or vol.state == VolumeState.RETAINED:
                return vol.path if vol is not None else None
            if vol.state == VolumeState.CREATING:
                self._rollback(vol)
                return None
            vol = replace(vol, state=VolumeState.DELETING)
            self._write(vol)
            return self._finish_delete(vol)

    def _finish_delete(self, vol: SharedVolume) -> Path | None:
        if vol.policy == DeletionPolicy.RETAIN:
            self._write(replace(vol, state=VolumeState.RETAINED))
            log.info("volume retained name=%s path=%s", vol.name, vol.path)
            return vol.path
        dest: Path | None = None
        if vol.policy == DeletionPolicy.ARCHIVE and os.path.lexists(vol.path):
            self.enforcer.release(vol.path, vol.project_id)
            dest = self.meta / "archive" / f"{vol.name}-{utc_stamp()}"
            os.rename(vol.path, dest)
        else:
            self.enforcer.release(vol.path, vol.project_id)
            self.enforcer.remove_dir(vol.path)
        md.remove_json(self._sidecar(vol.name))
        log.info("volume deleted name=%s policy=%s archive=%s", vol.name, vol.policy, dest)
        return dest

    def expand_volume(self, name: str, new_size: int) -> SharedVolume:
        """Raise the limit, online (a quota is one command; accounting just records it)."""
        with self.lock():
            vol = self.get_volume(name)
            if new_size < vol.size:
                raise OutOfRange(f"cannot shrink {name} from {vol.size} to {new_size}")
            if new_size == vol.size:
                return vol
            self.enforcer.apply(vol.path, new_size, vol.project_id)
            vol = replace(vol, size=new_size)
            self._write(vol)
        log.info("volume expanded name=%s size=%s", name, format_size(new_size))
        return vol

    def usage(self, name: str) -> Usage:
        """How full the volume is; an over-size volume also fires the event hook."""
        vol = self.get_volume(name)
        measured = self.enforcer.usage(vol.path, vol.project_id)
        result = Usage(used=measured.bytes, size=vol.size, inodes=measured.inodes)
        if result.abnormal and self.on_event is not None:
            self.on_event(VolumeEvent(volume=name, reason="OverSize", message=result.message))
        return result

    def check_all(self) -> list[VolumeEvent]:
        """Measure every volume (a periodic monitor calls this); the over-size events."""
        events = []
        for vol in self.list_volumes():
            usage = self.usage(vol.name)
            if usage.abnormal:
                events.append(VolumeEvent(volume=vol.name, reason="OverSize", message=usage.message))
        return events

    def reconcile(self) -> list[str]:
        """Finish or undo what a crash interrupted; one line per action."""
        actions = []
        with self.lock():
            for vol in self._all():
                if vol.state in (VolumeState.CREATING, VolumeState.DELETING):
                    self._undo_or_finish(vol)
                    done = "undone" if vol.state == VolumeState.CREATING else "finished"
                    actions.append(f"{vol.state} {vol.name}: {done}")
            for leftover in (self.meta / "tmp").iterdir():
                remove_tree(leftover)
                actions.append(f"removed partial copy {leftover.name}")
        return actions
