"""Small file-system steps the engine and the directory backup store share."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from statehold.errors import FailedPrecondition, NotFound


def open_readonly(path: Path) -> int:
    """A read-only descriptor of ``path`` (the caller closes it): a missing file is
    NotFound, any other refusal FailedPrecondition, so callers never see an OSError."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: no such file") from exc
    except OSError as exc:
        raise FailedPrecondition(f"{path}: cannot open: {exc.strerror}") from exc


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a create, rename or unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flock_within(fd: int, seconds: float, *, poll: float) -> bool:
    """Take an exclusive ``flock`` on ``fd``, trying every ``poll`` seconds for at most
    ``seconds``; False if it is still held then (a blocking flock could wait for ever on a
    holder that is stopped or hung)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
