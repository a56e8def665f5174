"""The metadata sidecars of a shared root: one small JSON file per volume and snapshot.

Layout (format version 1), all under ``<root>/.statehold/``::

    volumes/<name>.json      size, policy, state, quota kind, XFS project id, source
    snapshots/<name>.json    source volume, size, copy method
    snapshots/<name>/        the snapshot's read-only copy
    archive/<name>-<ts>/     volumes deleted with policy archive
    tmp/                     clones being copied (renamed into place when complete)
    lock                     flock(2) taken by every metadata change, on every node

Sidecars live outside the volume's directory so a pod can neither read nor corrupt them and
they do not count against the volume's quota. Each write goes to a temporary file, is
fsynced and renamed over the old one: a reader sees the old or the new file, never half.

Across nodes a reader is only as fresh as its client's caches: on GlusterFS set the volume
options in :data:`statehold.shared.share.GLUSTER_CONSISTENT_OPTIONS` (docs/shared.md), or a
node may read a sidecar up to the caches' timeout (1 s by default) late.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from statehold.errors import Corrupt, Unavailable
from statehold.shared.types import (
    CopyMethod,
    DeletionPolicy,
    QuotaKind,
    SharedSnapshot,
    SharedVolume,
    Source,
    SourceKind,
    VolumeState,
)

FORMAT_VERSION = 1
META_DIR = ".statehold"
STALE_RETRY_SECONDS = 3.0


def meta_dir(root: Path) -> Path:
    return root / META_DIR


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``data`` (tmp file + fsync + rename + dir fsync)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise Unavailable(f"cannot write {path}: {exc}") from exc


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's object, or None when absent; Corrupt when it is not our JSON."""
    deadline = time.monotonic() + STALE_RETRY_SECONDS
    while True:
        try:
            text = path.read_text(encoding="utf-8")
            break
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Another node replaced the file (rename): a FUSE client may hold the old
            # handle for a moment. A fresh lookup soon succeeds.
            if exc.errno == errno.ESTALE and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise Unavailable(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Corrupt(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise Corrupt(f"{path} is not a version-{FORMAT_VERSION} Statehold sidecar")
    return data


def volume_to_json(vol: SharedVolume) -> dict[str, Any]:
    data = asdict(vol)
    data["path"] = str(vol.path)
    data["version"] = FORMAT_VERSION
    return data


def volume_from_json(data: dict[str, Any]) -> SharedVolume:
    try:
        src = data.get("source")
        return SharedVolume(
            name=str(data["name"]),
            path=Path(data["path"]),
            size=int(data["size"]),
            policy=DeletionPolicy(data["policy"]),
            state=VolumeState(data["state"]),
            quota=QuotaKind(data["quota"]),
            project_id=int(data["project_id"]) if data.get("project_id") is not None else None,
            source=Source(SourceKind(src["kind"]), str(src["name"])) if src else None,
            copy_method=CopyMethod(data["copy_method"]) if data.get("copy_method") else None,
            created=str(data.get("created", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"volume sidecar has a bad field: {exc}") from exc


def snapshot_to_json(snap: SharedSnapshot) -> dict[str, Any]:
    data = asdict(snap)
    data["path"] = str(snap.path)
    data["version"] = FORMAT_VERSION
    return data


def snapshot_from_json(data: dict[str, Any]) -> SharedSnapshot:
    try:
        return SharedSnapshot(
            name=str(data["name"]),
            volume=str(data["volume"]),
            path=Path(data["path"]),
            size=int(data["size"]),
            copy_method=CopyMethod(data["copy_method"]),
            created=str(data.get("created", "")),
            ready=bool(data.get("ready", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Corrupt(f"snapshot sidecar has a bad field: {exc}") from exc


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the root's metadata lock: flock on ``.statehold/lock``.

    Every node takes the same lock file on the share, so two controllers (or a controller
    and a CLI) never allocate the same XFS project id or half-see a rename. GlusterFS and
    NFS forward the lock to the server; on a local directory it is an ordinary flock.
    """
    path = meta_dir(root) / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise Unavailable(f"cannot open lock {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
