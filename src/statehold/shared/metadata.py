"""The metadata sidecars of a shared root: one small JSON file per volume and snapshot.

Layout (format version 1), all under ``<root>/.statehold/``::

    volumes/<name>.json      size, policy, state, quota kind, XFS project id, source
    snapshots/<name>.json    source volume, size, copy method
    snapshots/<name>/        the snapshot's read-only copy
    archive/<name>-<ts>/     volumes deleted with policy archive
    tmp/                     clones being copied (renamed into place when complete)
    lock                     flock(2) taken by every metadata change, on every node
    lock.d/owner.json        the lock as a directory, where flock stays on one node (SMB)

Sidecars live outside the volume's directory so a pod can neither read nor corrupt them and
they do not count against the volume's quota. Each write goes to a temporary file, is
fsynced and renamed over the old one: a reader sees the old or the new file, never half.

Where a rename cannot replace a file in one step (SMB: see :mod:`statehold.shared.traits`)
the new file is first renamed to ``<name>.json.next`` (a rename onto a free name: one step
everywhere), the old one removed, and ``.next`` renamed into place. A reader that finds no
``<name>.json`` reads ``<name>.json.next``, so it always gets a whole old or new file; a
crash between the steps leaves ``.next``, which is then the value, and the next write under
the lock settles it. A removal refused while another SMB client has the file open (EBUSY,
a sharing violation) is retried for a short while.

The lock is ``flock`` on ``lock`` where the filesystem carries it to every node. Where it
does not (SMB) it is, in addition, the directory ``lock.d`` (``mkdir`` is one atomic create
on the server) holding ``owner.json`` (host, boot id, pid, process start time). A holder
whose process is gone from this host's boot is broken by the next caller on this host; a
holder on another host is waited for up to :data:`LOCK_WAIT_SECONDS`, then the call fails
(Unavailable) naming it and the directory to remove once that node is known to be down.

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
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from statehold.errors import Corrupt, StateholdError, Unavailable
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
BUSY_RETRY_SECONDS = 10.0
"""How long a removal refused because another SMB client has the file open is retried:
readers of metadata hold a file for one read."""
LOCK_WAIT_SECONDS = 120.0
"""How long a caller waits for a lock directory held by another host before failing."""
LOCK_OPEN_ATTEMPTS = 20
"""Opens of the lock file that may meet GlusterFS's EEXIST (see ``_open_lock``): each one
after the first finds the file another client just made, so two are enough in practice."""
NEXT = ".next"
LOCK_DIR = "lock.d"
_BUSY = (errno.EBUSY, errno.EACCES, errno.EEXIST, errno.ETXTBSY)


def meta_dir(root: Path) -> Path:
    return root / META_DIR


def _next(path: Path) -> Path:
    return path.with_name(path.name + NEXT)


def _retry_busy(action: Callable[[], None], what: str) -> None:
    """Run ``action``; again while another SMB client's open handle refuses it. A missing
    file counts as done (every caller removes or renames what may already be gone)."""
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    delay = 0.005
    while True:
        try:
            action()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in _BUSY or time.monotonic() > deadline:
                raise Unavailable(f"cannot {what}: {exc}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _unlink(path: Path) -> None:
    _retry_busy(path.unlink, f"remove {path}")


def write_json(path: Path, data: dict[str, Any], *, atomic_replace: bool = True) -> None:
    """Replace ``path`` with ``data``: a reader sees the old or the new content, never half.

    ``atomic_replace=False`` (SMB) replaces in steps through ``<name>.next`` (see above)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if atomic_replace:
            os.replace(tmp, path)
            if os.path.lexists(_next(path)):  # left by a write in steps that was cut short
                _unlink(_next(path))
        else:
            _replace_in_steps(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, StateholdError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, StateholdError):
            raise
        raise Unavailable(f"cannot write {path}: {exc}") from exc


def _replace_in_steps(tmp: Path, path: Path) -> None:
    nxt = _next(path)
    if os.path.lexists(nxt):  # a write that crashed between its steps
        if os.path.lexists(path):
            _unlink(nxt)  # never committed: readers saw ``path``
        else:
            os.rename(nxt, path)  # readers saw ``.next``: it is the value
    os.rename(tmp, nxt)  # onto a free name: one step on any server
    _unlink(path)
    _retry_busy(lambda: os.rename(nxt, path), f"rename {nxt} to {path.name}")


def remove_json(path: Path) -> None:
    """Remove a sidecar (and a ``.next`` a crash left); absent is fine."""
    _unlink(_next(path))
    _unlink(path)


def json_names(directory: Path) -> list[str]:
    """The names of the sidecars in ``directory``: ``<name>.json``, or only its ``.next``."""
    names = {p.name[: -len(".json")] for p in directory.glob("*.json")}
    names |= {p.name[: -len(".json" + NEXT)] for p in directory.glob("*.json" + NEXT)}
    return sorted(n for n in names if n and not n.startswith("."))


def _read_text(path: Path) -> str | None:
    deadline = time.monotonic() + STALE_RETRY_SECONDS
    while True:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Another node replaced the file (rename): a FUSE client may hold the old
            # handle for a moment (ESTALE), or on SMB the old file, removed while another
            # client still has it open, stays "delete pending" and refuses new opens
            # (EBUSY). Either way a fresh open soon finds the new file, or its ``.next``.
            if exc.errno in (errno.ESTALE, errno.EBUSY) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise Unavailable(f"cannot read {path}: {exc}") from exc


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's object, or None when absent; Corrupt when it is not our JSON.

    While a file is replaced in steps ``path`` is briefly missing and ``.next`` holds the
    new content; a few rounds cover a replacement finishing between the two lookups."""
    text = None
    for _ in range(3):
        text = _read_text(path)
        if text is None:
            text = _read_text(_next(path))
        if text is not None:
            break
    if text is None:
        return None
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
def locked(root: Path, *, shared_locks: bool = True) -> Iterator[None]:
    """Hold the root's metadata lock: flock on ``.statehold/lock``, and where flock does not
    reach the other nodes (``shared_locks=False``: SMB) the lock directory as well.

    Every node takes the same lock file on the share, so two controllers (or a controller
    and a CLI) never allocate the same XFS project id or half-see a rename. GlusterFS and
    NFS forward the lock to the server; on a local directory it is an ordinary flock. On
    SMB the flock still orders this node's own callers (and the breaking of dead holders).
    """
    path = meta_dir(root) / "lock"
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if shared_locks:
            yield
        else:
            with _lock_dir(meta_dir(root) / LOCK_DIR):
                yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock(path: Path) -> int:
    """Open (creating if need be) the lock file.

    GlusterFS's FUSE client answers EEXIST to an open with O_CREAT but without O_EXCL when
    another client created the file between this one's lookup and its create (two nodes
    taking a new root's lock for the first time). The file is then there: open it again."""
    last: OSError | None = None
    for _ in range(LOCK_OPEN_ATTEMPTS):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileExistsError as exc:
            last = exc
        except OSError as exc:
            raise Unavailable(f"cannot open lock {path}: {exc}") from exc
    raise Unavailable(f"cannot open lock {path}: {last}") from last


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/<pid>/stat): a pid reused by another
    process later has another start time. Empty when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _owner() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "host": socket.gethostname(), "boot": _boot_id(),
            "pid": os.getpid(), "start": _start_time(os.getpid()), "token": secrets.token_hex(8),
            "since": time.time()}


def _holder(lock: Path) -> dict[str, Any] | None:
    """The lock directory's owner record; None while its holder is still writing it (or
    when it died before it could)."""
    try:
        data = json.loads((lock / "owner.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stale(holder: dict[str, Any]) -> bool:
    """Only a holder of this very boot can be known dead: its process is gone."""
    boot = holder.get("boot")
    if not boot or boot != _boot_id():
        return False
    pid = holder.get("pid")
    return not isinstance(pid, int) or _start_time(pid) != holder.get("start")


@contextlib.contextmanager
def _lock_dir(lock: Path) -> Iterator[None]:
    me = _owner()
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = 0.005
    while True:
        try:
            os.mkdir(lock, 0o700)
            break
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and _stale(holder):
                _break(lock, holder, str(me["token"]))
                continue
            if time.monotonic() > deadline:
                who = (f"host {holder.get('host')} pid {holder.get('pid')}" if holder is not None
                       else "a holder that never wrote owner.json")
                raise Unavailable(
                    f"shared root lock {lock} is held by {who}; if that process is gone (its "
                    f"node died), remove {lock} and retry") from None
        except OSError as exc:
            # EBUSY: the last holder's lock.d is still open on another SMB client while it
            # is removed (delete pending): it is about to be free, so wait as for a holder
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise Unavailable(f"cannot take lock {lock}: {exc}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    try:
        try:
            with open(lock / "owner.json", "w", encoding="utf-8") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                lock.rmdir()
            raise Unavailable(f"cannot record the owner of lock {lock}: {exc}") from exc
        yield
    finally:
        holder = _holder(lock)
        if holder is None or holder.get("token") == me["token"]:  # None: unreadable now
            _unlink(lock / "owner.json")
            _retry_busy(lock.rmdir, f"remove lock {lock}")


def _break(lock: Path, holder: dict[str, Any], token: str) -> None:
    """Take a dead holder's lock directory away: renamed aside, checked, removed. Callers
    on this node are ordered by the flock, so only a caller on another mount of the same
    share can race here; a directory renamed aside that is not the dead holder's goes back."""
    aside = lock.with_name(f"{lock.name}.stale-{token}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Unavailable(f"cannot break stale lock {lock}: {exc}") from exc
    taken = _holder(aside)
    if taken is None or taken.get("token") != holder.get("token"):
        with contextlib.suppress(OSError):
            os.rename(aside, lock)
        return
    _unlink(aside / "owner.json")
    _retry_busy(aside.rmdir, f"remove stale lock {aside}")
