"""Persisted copy state of replicated volumes, one JSON file per volume in the pool
(docs/design/replication.md §5).

``.statehold/replication/<volume>.json`` is replaced atomically (temporary file, fsync,
rename, fsync of the directory), so a crash leaves either the old or the new state, never a
mix. ``<volume>.lock`` serialises streams and role changes of one volume across processes
(``flock``, which the kernel drops when a process dies); threads of one process queue on a
thread lock in front of it. A volume busy in another process is Aborted at once rather
than waited for: the caller's next cycle retries.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from statehold.engine.files import fsync_dir
from statehold.errors import Aborted, Corrupt, FailedPrecondition, InvalidArgument
from statehold.replication.points import newest, parse_point

FORMAT_VERSION = 1
DIR_NAME = "replication"
LOCK_WAIT = 60.0
"""Seconds a thread waits for another thread's operation on the same volume."""
KEEP_POINTS = 2
"""Points a replica keeps: its acknowledged one and the base it was reached from, so that
after a failover a replica one cycle behind the promoted copy still resyncs by diff."""


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class Role(enum.StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    SEEDING = "seeding"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class PeerState:
    """What a sender knows of one receiving peer."""

    acked: str | None = None     # the newest point the peer acknowledged
    sending: str | None = None   # the point being sent (kept until acknowledged or replaced)
    base: str | None = None      # the base of that send; None for a seed


@dataclass(frozen=True, slots=True)
class SeedProgress:
    """A receiver's seed in progress: the work file is durable up to ``offset``."""

    point: str
    epoch: int
    size: int
    offset: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A receiver's commit intent: the work file holds ``point`` complete and fsync'ed."""

    point: str
    epoch: int
    size: int
    bytes: int
    base: str | None = None  # the point the stream was a diff from: kept with the new one


@dataclass(frozen=True, slots=True)
class CopyState:
    """One copy's replication state (replication.md §5.2). A volume without a state file
    reads as ``CopyState(volume)``: a new, seeding copy at epoch 0 holding nothing."""

    volume: str
    role: Role = Role.SEEDING
    epoch: int = 0
    seq: int = 0
    point: str | None = None
    pending: str | None = None
    fork: str | None = None
    points: tuple[str, ...] = ()
    peers: Mapping[str, PeerState] = field(default_factory=dict)
    seed: SeedProgress | None = None
    committing: Commit | None = None
    updated_at: float = 0.0

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION, "volume": self.volume, "role": self.role.value,
            "epoch": self.epoch, "seq": self.seq, "point": self.point,
            "pending": self.pending, "fork": self.fork, "points": list(self.points),
            "peers": {name: {"acked": p.acked, "sending": p.sending, "base": p.base}
                      for name, p in sorted(self.peers.items())},
            "seed": None if self.seed is None else {
                "point": self.seed.point, "epoch": self.seed.epoch, "size": self.seed.size,
                "offset": self.seed.offset},
            "committing": None if self.committing is None else {
                "point": self.committing.point, "epoch": self.committing.epoch,
                "size": self.committing.size, "bytes": self.committing.bytes,
                "base": self.committing.base},
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CopyState:
        """Parse a state file's content; Corrupt if it is not one, FailedPrecondition for a
        newer version."""
        version = raw.get("version") if isinstance(raw, Mapping) else None
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FailedPrecondition(
                f"replication state version {version}; this build reads up to {FORMAT_VERSION}")
        try:
            if version != FORMAT_VERSION:
                raise ValueError(f"version {version!r}")
            seed, commit = raw["seed"], raw["committing"]
            state = cls(
                volume=str(raw["volume"]), role=Role(raw["role"]), epoch=int(raw["epoch"]),
                seq=int(raw["seq"]), point=raw["point"], pending=raw["pending"],
                fork=raw["fork"], points=tuple(raw["points"]),
                peers={str(k): PeerState(v["acked"], v["sending"], v["base"])
                       for k, v in raw["peers"].items()},
                seed=None if seed is None else SeedProgress(
                    seed["point"], int(seed["epoch"]), int(seed["size"]), int(seed["offset"])),
                committing=None if commit is None else Commit(
                    commit["point"], int(commit["epoch"]), int(commit["size"]),
                    int(commit["bytes"]), commit["base"]),
                updated_at=float(raw["updated_at"]))
            for p in (state.point, state.pending, state.fork, *state.points):
                if p is not None:
                    parse_point(p)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument) as exc:
            raise Corrupt(f"replication state is not valid: {exc}") from exc
        return state


def retained(state: CopyState) -> set[str]:
    """The listed points a copy must keep (replication.md §4.1, §6.2). Pure.

    A primary keeps its newest point, its fork (and every older point listed with it,
    until ``release_fork``), its acknowledged point and each peer's acknowledged, sending
    and base points. A replica keeps its newest :data:`KEEP_POINTS`. A stale copy keeps
    everything (any of it may be the common base of its resync). A seeding copy has none.
    """
    if state.role is Role.STALE:
        return set(state.points)
    if state.role is not Role.PRIMARY:
        return set(sorted(state.points, key=parse_point)[-KEEP_POINTS:])
    keep = {newest(state.points), state.point, state.fork, state.pending}
    if state.fork is not None:
        limit = parse_point(state.fork)
        keep |= {p for p in state.points if parse_point(p) <= limit}
    for peer in state.peers.values():
        keep |= {peer.acked, peer.sending, peer.base}
    return {p for p in keep if p is not None}


def without(points: Iterable[str], dropped: Iterable[str]) -> tuple[str, ...]:
    gone = set(dropped)
    return tuple(p for p in points if p not in gone)


class StateStore:
    """The replication directory of one pool: state files, work files, lock files."""

    def __init__(self, meta_dir: Path,
                 work_dir: Callable[[str], Path | None] | None = None) -> None:
        self.dir = meta_dir / DIR_NAME
        self._work_dir = work_dir
        """The pool's ``Pool.work_dir``: where a file renamed over a volume's backing file
        must be made (inside the volume's subvolume, in a subvolume pool)."""

    def path(self, volume: str) -> Path:
        return self.dir / f"{volume}.json"

    def work_path(self, volume: str) -> Path:
        """The file a stream is applied to before it replaces the volume's backing file:
        ``.statehold/replication/<volume>.work``, or ``volumes/<volume>/.work`` in a
        subvolume pool, because rename(2) across subvolumes fails with EXDEV."""
        inside = self._work_dir(volume) if self._work_dir is not None else None
        return inside / ".work" if inside is not None else self.dir / f"{volume}.work"

    def exists(self, volume: str) -> bool:
        return self.path(volume).exists()

    def volumes(self) -> list[str]:
        """The volumes of this pool that have a state file (replicated copies), by name."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in self.dir.glob("*.json"))

    def load(self, volume: str) -> CopyState:
        try:
            raw = json.loads(self.path(volume).read_bytes())
        except FileNotFoundError:
            return CopyState(volume)
        except (OSError, ValueError) as exc:
            raise Corrupt(f"replication state of {volume!r} is unreadable: {exc}") from exc
        state = CopyState.from_json(raw)
        if state.volume != volume:
            raise Corrupt(f"replication state file of {volume!r} names {state.volume!r}")
        return state

    def save(self, state: CopyState, **changes: Any) -> CopyState:
        """Persist ``state`` with ``changes`` applied (atomic replace); return what was saved."""
        new = replace(state, **changes, updated_at=time.time())
        self.dir.mkdir(mode=0o700, exist_ok=True)
        final = self.path(new.volume)
        tmp = final.with_name(final.name + ".tmp")
        data = json.dumps(new.to_json(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return new

    def delete(self, volume: str) -> None:
        work = self.work_path(volume)
        for path in (work, self.path(volume)):
            path.unlink(missing_ok=True)
        for directory in {work.parent, self.dir}:
            if directory.exists():
                fsync_dir(directory)

    @contextlib.contextmanager
    def locked(self, volume: str, *, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the volume's replication lock.

        Threads of this process queue for up to ``wait`` seconds (a sender serving several
        peers); another process holding the lock is Aborted at once, as is a thread still
        waiting after ``wait``: the caller's next cycle retries.
        """
        self.dir.mkdir(mode=0o700, exist_ok=True)
        path = self.dir / f"{volume}.lock"
        with _THREAD_LOCKS_GUARD:
            thread_lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
        got = thread_lock.acquire(timeout=wait) if wait > 0 else thread_lock.acquire(blocking=False)
        if not got:
            raise Aborted(f"volume {volume!r} is busy with another replication operation")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise Aborted(f"volume {volume!r} is busy with another process's "
                                      "replication operation") from None
                    raise
                yield
            finally:
                os.close(fd)
        finally:
            thread_lock.release()
