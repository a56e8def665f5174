"""Repository locks (format §8): shared for backup/restore/verify, exclusive for prune/gc.

A lock is an object under ``locks/``; it is alive until its ``expires`` time, and the holder
re-puts it every ttl/3 from a background thread. Acquisition is optimistic: check, put,
check again; on a conflict the newcomer withdraws and raises Aborted (retry later).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from statehold.backup.repository import Repository
from statehold.errors import Aborted, Corrupt, NotFound

log = logging.getLogger("statehold.backup.locks")

Kind = Literal["shared", "exclusive"]
DEFAULT_TTL = 30 * 60.0


@dataclass(frozen=True, slots=True)
class LockInfo:
    key: str
    kind: Kind
    host: str
    pid: int
    created: float
    expires: float


def live_locks(repo: Repository, now: float) -> list[LockInfo]:
    """Locks not expired and not held by a process of this host that no longer exists
    (a killed backup must not block gc until its lock expires)."""
    return [lk for lk in all_locks(repo) if lk.expires > now and not _dead_here(lk)]


def _dead_here(lk: LockInfo) -> bool:
    if lk.host != socket.gethostname() or lk.pid == os.getpid():
        return False
    try:
        os.kill(lk.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


def all_locks(repo: Repository) -> list[LockInfo]:
    out = []
    for info in repo.store.list("locks/"):
        try:
            doc = json.loads(repo.get_blob(info.key))
            lock = LockInfo(info.key, doc["kind"], doc["host"], int(doc["pid"]), float(doc["created"]),
                            float(doc["expires"]))
        except NotFound:
            continue  # released meanwhile
        except (Corrupt, ValueError, KeyError) as exc:
            log.warning("lock key=%s unreadable, ignored: %s", info.key, exc)
            continue
        out.append(lock)
    return out


class Lock:
    """Context manager holding one repository lock, refreshed in the background."""

    def __init__(self, repo: Repository, kind: Kind, *, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.kind = kind
        self.ttl = ttl
        self.clock = clock
        self.key = f"locks/{secrets.token_hex(8)}"
        self.created = 0.0
        self.expires = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_failed = False

    def _put(self) -> None:
        now = self.clock()
        self.expires = now + self.ttl
        doc = {"kind": self.kind, "host": socket.gethostname(), "pid": os.getpid(),
               "created": self.created, "expires": self.expires}
        self.repo.put_blob(self.key, json.dumps(doc).encode())

    def _conflicts(self) -> list[LockInfo]:
        others = [lk for lk in live_locks(self.repo, self.clock()) if lk.key != self.key]
        if self.kind == "exclusive":
            return others
        return [lk for lk in others if lk.kind == "exclusive"]

    def acquire(self) -> Lock:
        self.created = self.clock()
        if found := self._conflicts():
            raise Aborted(_busy(self.kind, found))
        self._put()
        if found := self._conflicts():
            self.repo.store.delete(self.key)
            raise Aborted(_busy(self.kind, found))
        self._thread = threading.Thread(target=self._refresher, name=f"lock-{self.key}", daemon=True)
        self._thread.start()
        return self

    def _refresher(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._put()
            except Exception as exc:  # keep trying; check_alive() refuses to commit if it expires
                self._refresh_failed = True
                log.warning("lock key=%s refresh failed: %s", self.key, exc)

    def check_alive(self) -> None:
        """Before committing a manifest: an expired lock means gc may have run (format §7)."""
        if self.clock() >= self.expires:
            raise Aborted(f"repository lock {self.key} expired before the backup finished; "
                          "its chunks may have been collected: run the backup again")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.repo.store.delete(self.key)

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _busy(kind: str, found: list[LockInfo]) -> str:
    holders = ", ".join(f"{lk.kind} by {lk.host} pid {lk.pid}" for lk in found[:3])
    return f"repository is busy, cannot take a {kind} lock: held {holders}; retry later"


def remove_expired(repo: Repository, now: float) -> int:
    """Delete locks whose holder stopped refreshing them or died on this host."""
    dead = [lk for lk in all_locks(repo) if lk.expires <= now or _dead_here(lk)]
    for lk in dead:
        repo.store.delete(lk.key)
    return len(dead)
