"""The replica's side of a replication stream (docs/design/replication.md §4.2, §5.3).

Frames are applied to a private work file, never to the volume: a reflink clone of the
base point (an incremental) or a sparse file (a seed). Only a complete stream, every
extent verified and the end's count and digest matching, is fsync'ed and committed; the
commit records its intent first and then switches the volume's content with one rename,
so a stream cut at any frame, or a process killed at any instant, leaves the previous
acknowledged point in place or rolls the verified new one forward.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from statehold.engine.ficlone import reflink
from statehold.engine.files import fsync_dir
from statehold.engine.names import MiB, validate_name
from statehold.engine.pool import Pool
from statehold.errors import (
    Aborted,
    Corrupt,
    FailedPrecondition,
    Fenced,
    InvalidArgument,
    OutOfCapacity,
    Unavailable,
)
from statehold.replication import holding
from statehold.replication.holes import punch_hole, start_writeback
from statehold.replication.state import Commit, CopyState, Role, SeedProgress, StateStore
from statehold.replication.wire import (
    MAX_PAYLOAD,
    Ack,
    Data,
    Extent,
    Frame,
    StreamDigest,
    StreamEnd,
    StreamHeader,
    Zero,
    check,
    checksum,
)

log = logging.getLogger("statehold.replication.receiving")

CHECKPOINT = 64 * MiB
"""Seed bytes applied between two durable progress records (fdatasync + state write)."""
DIRECT_ALIGN = 4096
"""Offset, length and memory alignment of an extent written with O_DIRECT."""


WRITE_WINDOW = 4 * MAX_PAYLOAD
"""Bytes of consecutive extents gathered into one direct write at most."""


class ExtentWriter:
    """Writes extents into the work file, bypassing the page cache where it can.

    A replica's bytes are not read back (a replica is never in use), so caching them only
    costs: filling new page-cache pages was, measured, the largest CPU cost of a replica's
    agent (docs/benchmarks.md, replication). With ``O_DIRECT`` set on the descriptor (and
    cleared again by :meth:`close`), consecutive extents are gathered in one reused
    page-aligned buffer and written together (up to :data:`WRITE_WINDOW`: fewer, larger
    writes, as the disk likes them) by :meth:`flush`, which the caller runs before any
    fdatasync. An extent not aligned to :data:`DIRECT_ALIGN`, a filesystem that refuses
    ``O_DIRECT`` or its alignment: buffered writes from then on, each followed by
    :func:`~statehold.replication.holes.start_writeback`.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        self._buffer: mmap.mmap | None = None
        self._at = self._filled = 0  # file offset of the gathered bytes, their count
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_DIRECT)
        except OSError:  # EINVAL: this filesystem has no direct I/O
            return
        self._buffer = mmap.mmap(-1, WRITE_WINDOW)  # anonymous: page aligned

    @property
    def direct(self) -> bool:
        return self._buffer is not None

    def write(self, data: Data, offset: int) -> None:
        n = len(data)
        buffer = self._buffer
        if buffer is not None and not offset % DIRECT_ALIGN and not n % DIRECT_ALIGN:
            if self._filled and (offset != self._at + self._filled
                                 or self._filled + n > len(buffer)):
                self.flush()
            if self._buffer is not None and n <= len(buffer):
                if not self._filled:
                    self._at = offset
                with memoryview(buffer) as view:
                    view[self._filled:self._filled + n] = data
                self._filled += n
                return
        self.flush()
        self._buffered()
        _pwrite_all(self.fd, data, offset)
        start_writeback(self.fd, offset, n)

    def flush(self) -> None:
        """Write what is gathered (before an fdatasync, a hole, the end)."""
        buffer, n = self._buffer, self._filled
        if buffer is None or not n:
            return
        self._filled = 0
        with memoryview(buffer) as view, view[:n] as pending:
            try:
                _pwrite_all(self.fd, pending, self._at)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            # this filesystem wants another alignment: nothing was written, go buffered
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            _pwrite_all(self.fd, pending, self._at)
            start_writeback(self.fd, self._at, n)
        self._buffered()

    def _buffered(self) -> None:
        if self._buffer is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            self._buffer.close()
            self._buffer = None
            self._filled = 0

    def close(self) -> None:
        """Back to the descriptor's own flags; the buffer is freed (unflushed bytes are
        dropped: only a stream that failed ends without a flush)."""
        self._buffered()


@dataclass
class ApplyTimes:
    """Where a stream's time went on the receiver (seconds), for its log line: writing
    extents (and hashing those not yet verified), checkpoint fdatasyncs, the rest waiting
    for frames."""

    total: float = 0.0
    write: float = 0.0
    sync: float = 0.0


def apply_frames(fd: int, header: StreamHeader, frames: Iterator[Frame], *,
                 checkpoint: int = CHECKPOINT,
                 on_checkpoint: Callable[[int], None] | None = None,
                 times: ApplyTimes | None = None) -> int:
    """Apply the frames that follow ``header`` to ``fd``, through the end frame.

    Returns the data bytes written. Every frame is checked before it is written: order and
    bounds (InvalidArgument), extent checksums (an extent :func:`~statehold.replication.wire.
    decode` already verified is not hashed again) and the end's count, bytes and digest
    (Corrupt). Iteration stops at the end frame; running out before it is Unavailable.
    Extents go through an :class:`ExtentWriter` (direct I/O where possible, else writeback
    started at once), so the fdatasync of a checkpoint waits for little: ``on_checkpoint(
    offset)`` is called after an fdatasync every ``checkpoint`` data bytes, when every frame
    below ``offset`` is durable.
    """
    digest = StreamDigest(header)
    pos = header.resume_from
    since = 0
    clock = time.monotonic
    started = clock()
    written = synced = 0.0
    writer = ExtentWriter(fd)
    try:
        for frame in frames:
            check(frame)
            if isinstance(frame, StreamEnd):
                writer.flush()
                ours = digest.end()
                if (frame.extents, frame.bytes) != (ours.extents, ours.bytes):
                    raise Corrupt(f"stream end says {frame.extents} frames / {frame.bytes} bytes, "
                                  f"received {ours.extents} / {ours.bytes}")
                if frame.digest != ours.digest:
                    raise Corrupt("stream digest mismatch: a frame was lost, altered or reordered")
                return ours.bytes
            if not isinstance(frame, Extent | Zero):
                raise InvalidArgument(f"unexpected {type(frame).__name__} inside a stream")
            length = frame.length
            if frame.offset < pos or frame.offset + length > header.size:
                raise InvalidArgument(
                    f"frame [{frame.offset}, {frame.offset + length}) is out of order or outside "
                    f"[{pos}, {header.size})")
            t0 = clock()
            if isinstance(frame, Extent):
                if not frame.verified and checksum(frame.data) != frame.checksum:
                    raise Corrupt(f"extent at offset {frame.offset}: data does not match its "
                                  "checksum")
                writer.write(frame.data, frame.offset)
                since += length
            else:
                writer.flush()
                punch_hole(fd, frame.offset, length)
            digest.add(frame)
            pos = frame.offset + length
            t1 = clock()
            written += t1 - t0
            if on_checkpoint is not None and since >= checkpoint:
                writer.flush()
                os.fdatasync(fd)
                on_checkpoint(pos)
                since = 0
                synced += clock() - t1
        raise Unavailable("the stream was cut before its end frame")
    finally:
        writer.close()
        if times is not None:
            times.total, times.write, times.sync = clock() - started, written, synced


def _pwrite_all(fd: int, data: Data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


# -- commit and recovery (the volume's replication lock is held) ---------------------------
def finish_commit(pool: Pool, store: StateStore, state: CopyState) -> CopyState:
    """Roll a recorded commit forward (idempotent): expand, rename, snapshot, record."""
    commit = state.committing
    assert commit is not None
    volume = state.volume
    vol = pool.get_volume(volume)
    work = store.work_path(volume)
    if work.exists():
        if vol.device is not None or vol.mounts:
            raise FailedPrecondition(
                f"volume {volume!r} is attached; its replica content cannot be switched")
        if vol.size < commit.size:
            pool.expand(volume, commit.size)
        # the one atomic switch of the volume's content (in one directory: a subvolume
        # pool's work file sits beside the backing file, in the volume's subvolume)
        target = pool.volume_path(volume)
        os.rename(work, target)
        fsync_dir(target.parent)
        fsync_dir(store.dir)
    elif vol.size < commit.size:
        pool.expand(volume, commit.size)
    pool.fault("replication.commit.renamed")
    holding.take(pool, volume, commit.point, freeze=False)
    pool.fault("replication.commit.snapshot")
    points = state.points if commit.point in state.points else (*state.points, commit.point)
    state = store.save(state, role=Role.REPLICA, epoch=max(state.epoch, commit.epoch),
                       point=commit.point, points=points, committing=None, seed=None,
                       pending=None, fork=None, peers={})
    pool.fault("replication.commit.done")
    log.info("replication point committed volume=%s/%s point=%s epoch=%d bytes=%d", pool.name,
             volume, commit.point, state.epoch, commit.bytes)
    # the new point and its base are on the primary's lineage; anything else this copy
    # listed (a stale copy's own points, older bases) is of no use as a base any more
    return holding.collect(pool, store, state, keep={p for p in (commit.point, commit.base) if p})


def recover(pool: Pool, store: StateStore, state: CopyState) -> CopyState:
    """Finish a crashed commit, drop an abandoned incremental work file, tidy the points."""
    if state.committing is not None:
        state = finish_commit(pool, store, state)
    work = store.work_path(state.volume)
    if state.seed is None and work.exists():
        work.unlink()
        fsync_dir(work.parent)
    state = holding.settle(pool, store, state)
    return holding.collect(pool, store, state)


class Receiver:
    """Applies streams to one replica volume of ``pool``.

    The engine volume must exist (created with the primary's spec before the first seed) and
    must not be attached: a replica is never in use. ``checkpoint``: seed bytes between two
    durable progress records.
    """

    def __init__(self, pool: Pool, volume: str, *, checkpoint: int = CHECKPOINT) -> None:
        self.pool = pool
        self.volume = validate_name(volume, what="volume name")
        self.store = StateStore(pool.meta_dir, pool.work_dir)
        if checkpoint <= 0:
            raise InvalidArgument(f"checkpoint must be positive, got {checkpoint}")
        self.checkpoint = checkpoint

    def state(self) -> CopyState:
        """The copy state (after finishing a crashed commit); while a stream is being
        applied, what is persisted so far."""
        try:
            with self.store.locked(self.volume, wait=0):
                return recover(self.pool, self.store, self.store.load(self.volume))
        except Aborted:
            return self.store.load(self.volume)

    def apply(self, frames: Iterable[Frame]) -> Ack:
        """Apply one stream; return the ack of its point once it is committed.

        Fenced (an older epoch, or a primary at the same one), FailedPrecondition (base not
        held, nothing to resume, the volume in use or larger), InvalidArgument (a malformed
        stream), Corrupt (a checksum or digest mismatch), Unavailable (cut before its end),
        OutOfCapacity (the pool is full). After any of them the acknowledged point is intact.
        """
        with self.store.locked(self.volume, wait=0):
            state = recover(self.pool, self.store, self.store.load(self.volume))
            stream = iter(frames)
            header = next(stream, None)
            if header is None:
                raise Unavailable("the stream was cut before its header")
            if not isinstance(header, StreamHeader):
                raise InvalidArgument(f"a stream must open with a header, not {type(header).__name__}")
            check(header)
            state, early = self._admit(state, header)
            if early is not None:
                return early
            times = ApplyTimes()
            try:
                nbytes, fsynced = self._apply(state, header, stream, times)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OutOfCapacity(f"pool {self.pool.name!r} is full: {exc}") from exc
                raise Unavailable(f"volume {self.volume!r}: applying the stream failed: {exc}") from exc
            self.pool.fault("replication.apply.synced")
            started = time.monotonic()
            commit = Commit(header.point, header.epoch, header.size, nbytes, header.base)
            state = self.store.save(self.store.load(self.volume), committing=commit)
            self.pool.fault("replication.commit.intent")
            finish_commit(self.pool, self.store, state)
            log.info("replication stream applied volume=%s/%s point=%s bytes=%d ms=%.0f "
                     "write_ms=%.0f checkpoint_ms=%.0f fsync_ms=%.0f commit_ms=%.0f",
                     self.pool.name, self.volume, header.point, nbytes, times.total * 1000,
                     times.write * 1000, times.sync * 1000, fsynced * 1000,
                     (time.monotonic() - started) * 1000)
            return Ack(point=header.point, epoch=header.epoch, bytes=nbytes)

    # -- internals (the lock is held) -------------------------------------------------------
    def _admit(self, state: CopyState, header: StreamHeader) -> tuple[CopyState, Ack | None]:
        """Checks before any byte is written; a newer epoch is persisted here."""
        if header.volume != self.volume:
            raise InvalidArgument(f"stream is for volume {header.volume!r}, not {self.volume!r}")
        if header.epoch < state.epoch:
            raise Fenced(f"volume {self.volume!r}: stream at epoch {header.epoch} refused, "
                         f"this copy knows epoch {state.epoch}")
        if state.role is Role.PRIMARY:
            if header.epoch <= state.epoch:
                raise Fenced(f"volume {self.volume!r} is the primary at epoch {state.epoch}")
            raise FailedPrecondition(f"volume {self.volume!r} is a primary (epoch {state.epoch}); "
                                     f"demote it before it receives epoch {header.epoch}")
        if header.size % MiB:
            raise InvalidArgument(f"stream size {header.size} is not a multiple of 1 MiB")
        if header.epoch > state.epoch:  # from now on every older primary is refused
            state = self.store.save(state, epoch=header.epoch)
        if state.role is Role.REPLICA and header.point == state.point:
            return state, Ack(point=header.point, epoch=state.epoch, bytes=0)
        vol = self.pool.get_volume(self.volume)
        if vol.device is not None or vol.mounts:
            raise FailedPrecondition(f"volume {self.volume!r} is attached: a replica is never in use")
        if header.size < vol.size:
            raise FailedPrecondition(
                f"volume {self.volume!r} is {vol.size} bytes; a stream of {header.size} would shrink it")
        if header.base is not None and header.base not in holding.held(self.pool, state):
            raise FailedPrecondition(
                f"volume {self.volume!r}: base point {header.base} is not held here; seed instead")
        if header.resume_from:
            seed, work = state.seed, self.store.work_path(self.volume)
            if (seed is None or seed.point != header.point or seed.size != header.size
                    or seed.offset < header.resume_from or not work.exists()
                    or work.stat().st_size != header.size):
                raise FailedPrecondition(
                    f"volume {self.volume!r}: no seed of {header.point} to resume at "
                    f"{header.resume_from} (have {seed})")
        return state, None

    def _apply(self, state: CopyState, header: StreamHeader, stream: Iterator[Frame],
               times: ApplyTimes) -> tuple[int, float]:
        """(data bytes applied, seconds the final fsync took)."""
        work = self.store.work_path(self.volume)
        seed = header.base is None
        fd = self._prepare(state, header, work)
        try:
            try:
                nbytes = apply_frames(
                    fd, header, stream, checkpoint=self.checkpoint, times=times,
                    on_checkpoint=(lambda offset: self._progress(header, offset)) if seed else None)
                started = time.monotonic()
                os.fsync(fd)
                fsynced = time.monotonic() - started
            finally:
                os.close(fd)
        except BaseException:
            if not seed:  # an incremental restarts from its base; a seed keeps its progress
                work.unlink(missing_ok=True)
            raise
        return nbytes, fsynced

    def _prepare(self, state: CopyState, header: StreamHeader, work: Path) -> int:
        """Open the private work file the stream is applied to."""
        if header.base is not None:
            if state.seed is not None:  # the seed in progress is abandoned for this diff
                self.store.save(state, seed=None)
            reflink(holding.path(self.pool, self.volume, header.base), work)
            fd = os.open(work, os.O_RDWR | os.O_CLOEXEC)
            if os.fstat(fd).st_size > header.size:
                os.close(fd)
                work.unlink()
                raise FailedPrecondition(f"base {header.base} is larger than point {header.point}")
            os.ftruncate(fd, header.size)
            return fd
        if header.resume_from == 0:
            # recorded before the work file is replaced: a crash in between must not leave
            # an older seed's offset describing a fresh, empty file
            self.store.save(state, seed=SeedProgress(header.point, header.epoch, header.size, 0))
            fd = os.open(work, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, header.size)
            return fd
        log.info("replication seed resumed volume=%s/%s point=%s offset=%d", self.pool.name,
                 self.volume, header.point, header.resume_from)
        return os.open(work, os.O_RDWR | os.O_CLOEXEC)

    def _progress(self, header: StreamHeader, offset: int) -> None:
        state = self.store.load(self.volume)
        self.store.save(state, seed=SeedProgress(header.point, header.epoch, header.size, offset))
        self.pool.fault("replication.seed.checkpoint")
