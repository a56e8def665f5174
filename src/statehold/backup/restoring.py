"""Restoring a backup into a new file or into a fresh volume's (blank) backing file.

Sparse: chunks absent from the manifest are zeros and are never written. Format 2 reads
several chunks of a pack per request (:mod:`.packreader`), format 1 one object per chunk;
chunks arrive in any order and are written at their offsets. Every chunk is
decrypted, re-hashed and length-checked before it is written (``chunkstore.read_chunk``);
the first mismatch stops the restore with Corrupt naming the chunk, and the target is
removed (new file) or blanked (existing file): a restore either completes or leaves
nothing that could be mistaken for the data.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

from statehold.backup import chunkstore, extents, packreader
from statehold.backup.locks import Lock
from statehold.backup.manifest import Manifest
from statehold.backup.repository import Repository
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    OutOfCapacity,
    OutOfRange,
    StateholdError,
    Unavailable,
)

log = logging.getLogger("statehold.backup.restore")

Progress = Callable[[int, int], None]

FLUSH_EVERY = 128 << 20
"""After this many bytes written, start their writeback (POSIX_FADV_DONTNEED starts it
and drops pages already clean): the final fsync then waits for the last stretch only,
not for the whole image, and a large restore does not push the node's page cache out."""


def restore_image(repo: Repository, backup_id: str, target: Path, *, existing: bool = False,
                  parallel: int = 16, progress: Progress | None = None) -> Manifest:
    """Restore ``backup_id`` into ``target``.

    ``existing=False``: target must not exist; the data goes to a temporary name beside it
    and is renamed into place only when complete. ``existing=True``: target is a new
    volume's backing file, which must hold no data yet and be at least the backup's size.
    """
    with Lock(repo, "shared"):
        m = repo.load_manifest(backup_id)
        if m.kind != "image":
            raise InvalidArgument(f"backup {backup_id} is a {m.kind} backup, not a volume image")
        if existing:
            _check_blank(target, m.size)
            _write_all(repo, m, target, parallel, progress, on_fail=lambda: _blank(target))
        else:
            if target.exists():
                raise AlreadyExists(f"restore target {target} already exists")
            partial = target.with_name(target.name + ".partial")
            if partial.exists():
                raise AlreadyExists(f"{partial} exists: an earlier restore was interrupted; remove it")
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.ftruncate(fd, m.size)
                os.close(fd)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise InvalidArgument(f"cannot create {partial}: {exc.strerror}") from exc
            _write_all(repo, m, partial, parallel, progress, on_fail=lambda: partial.unlink(missing_ok=True))
            os.rename(partial, target)
        log.info("restore id=%s volume=%s target=%s size=%d", m.backup_id, m.volume, target, m.size)
        return m


def _check_blank(target: Path, size: int) -> None:
    try:
        have = target.stat().st_size
    except FileNotFoundError:
        raise FailedPrecondition(f"restore target {target} does not exist") from None
    if have < size:
        raise OutOfRange(f"restore target {target} holds {have} bytes, the backup needs {size}")
    if extents.data_ranges(target):
        raise FailedPrecondition(f"restore target {target} already holds data; "
                                 "restore only into a new volume")


def _write_error(exc: OSError, path: Path, offset: int) -> StateholdError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfCapacity(f"restore target {path}: no space left at offset {offset}")
    return Unavailable(f"restore target {path}: write failed at offset {offset}: {exc.strerror}")


def _blank(target: Path) -> None:
    """Punch out everything written so far: a failed restore leaves a blank volume."""
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.truncate(0)
        f.truncate(size)
        os.fsync(f.fileno())


def _write_all(repo: Repository, m: Manifest, path: Path, parallel: int, progress: Progress | None,
               on_fail: Callable[[], None]) -> None:
    total = sum(m.chunk_length(off) for off in m.offsets)
    done = 0
    written = 0
    lock = threading.Lock()
    if progress is not None:
        progress(0, total)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        def put(off: int, data: bytes | memoryview) -> None:
            nonlocal done, written
            length = len(data)
            view = memoryview(data)
            pos = 0
            try:
                while pos < length:
                    pos += os.pwrite(fd, view[pos:], off + pos)
            except OSError as exc:
                raise _write_error(exc, path, off + pos) from exc
            with lock:
                done += length
                written += length
                flush = FLUSH_EVERY > 0 and written >= FLUSH_EVERY
                if flush:
                    written = 0
                if progress is not None:
                    progress(done, total)
            if flush:
                with contextlib.suppress(OSError):  # advice: a target that ignores it is fine
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        def one(off: int, cid: bytes) -> None:
            # Corrupt / NotFound name the chunk
            put(off, chunkstore.read_chunk(repo, cid, m.chunk_length(off)))

        if chunkstore.packed(repo):
            chunkstore.known_chunks(repo)  # the index cache synced under our lock
            packreader.fetch_views(repo, ((cid, m.chunk_length(off), off) for off, cid in m.entries()), put,
                                   parallel=parallel)
        else:
            _fetch_each(m, one, parallel)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _write_error(exc, path, 0) from exc
    except BaseException:
        os.close(fd)
        fd = -1
        with contextlib.suppress(OSError):
            on_fail()
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _fetch_each(m: Manifest, one: Callable[[int, bytes], None], parallel: int) -> None:
    """Format 1: one request per chunk, ``parallel`` at a time."""
    window = max(2, 2 * parallel)
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="restore") as pool:
        running: set[Future[None]] = set()
        try:
            for off, cid in m.entries():
                if len(running) >= window:
                    finished, running = wait(running, return_when=FIRST_EXCEPTION)
                    for f in finished:
                        f.result()
                running.add(pool.submit(one, off, cid))
            for f in running:
                f.result()
        except BaseException:
            for f in running:
                f.cancel()
            raise
