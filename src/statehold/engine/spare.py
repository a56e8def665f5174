"""A helper process started ahead of need, so that a caller in a hurry does not wait for an
interpreter to start.

A freeze keeper is a Python process: from ``Popen`` to its first answer it takes 60-140 ms
on the development VM, more than the rest of a mounted volume's snapshot in a subvolume
pool together (flushes, FIFREEZE, the snapshot ioctl, FITHAW: ~25 ms). A process that has
used one keeper keeps one more, started right after, idle until the next snapshot takes it.

An idle spare holds nothing: it answers its start-up line and waits on its stdin. It ends
when its parent does (end of file on that pipe, SIGKILL of the parent included), when it
is dropped (the key it was started for no longer matches, or the interpreter exits), or
when it is killed; a dead spare is noticed when taken and replaced by a fresh process.
A forked child never takes its parent's spare (the pipe is the parent's).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable

Spawn = Callable[[tuple[str, ...]], "subprocess.Popen[bytes]"]


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """End a spare that was never asked anything (nothing to thaw): kill and reap it."""
    with contextlib.suppress(OSError):
        proc.kill()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()
    proc.wait()


class Spare:
    """At most one process started ahead of need, for one key (its arguments)."""

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._lock = threading.Lock()
        self._held: tuple[tuple[str, ...], int, subprocess.Popen[bytes]] | None = None
        atexit.register(self.drop)

    def take(self, key: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], bool]:
        """A process started with ``key``: the spare if it matches and lives (True), else a
        new one (False)."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            held_key, owner, proc = held
            if held_key == key and owner == os.getpid() and proc.poll() is None:
                return proc, True
            if owner == os.getpid():
                _discard(proc)
        return self._spawn(key), False

    def restock(self, key: tuple[str, ...]) -> None:
        """Start the next spare for ``key`` unless one is waiting (a few ms: fork and exec;
        the interpreter starts in the new process, not here)."""
        with self._lock:
            if self._held is not None and self._held[1] == os.getpid():
                return
            self._held = (key, os.getpid(), self._spawn(key))

    def pid(self) -> int | None:
        """The idle spare's pid, if there is one (tests tell it from a keeper in use)."""
        with self._lock:
            held = self._held
        return held[2].pid if held is not None and held[1] == os.getpid() else None

    def drop(self) -> None:
        """End the idle spare, if any."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None and held[1] == os.getpid():
            _discard(held[2])
