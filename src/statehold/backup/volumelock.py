"""One backup of a volume at a time on this host.

A backup keeps its own snapshot as the volume's next parent and deletes the snapshots it
superseded, so two backups of one volume at once could delete each other's parent. A
thread lock per volume serialises the threads of a process (the operator's handlers); an
``flock`` on a file of the volume (an engine volume's backing image) serialises processes
(a CLI beside the agent). The kernel drops a flock when its process dies, so a killed
backup never leaves the volume locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from statehold.errors import NotFound

log = logging.getLogger("statehold.backup.volumelock")

_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def volume_lock(key: str, path: Path | None = None) -> Iterator[None]:
    """Hold the backup lock of volume ``key`` (its id); with ``path``, also an exclusive
    flock on that file, waited for (and logged) when another process holds it."""
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if path is None:
            yield
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFound(f"volume {key}: {path} does not exist") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("backup volume=%s waiting for another process's backup of it", key)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock
