"""The primary's side of a replication stream (docs/design/replication.md §4.1).

A stream reads one point snapshot, never the live volume: the point is a reflink taken
with the filesystem frozen, so it is consistent and immutable while it streams. Only the
ranges FIEMAP says changed since the base travel (every data range for a seed), cut at
multiples of :data:`MAX_PAYLOAD`; all-zero chunks become zero frames (dropped in a seed,
whose receiver starts from a hole).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from statehold.engine.extents import changed_ranges, data_ranges, merge, total
from statehold.engine.files import open_readonly
from statehold.engine.names import validate_name
from statehold.engine.pool import Pool
from statehold.errors import Corrupt, FailedPrecondition, Fenced, InvalidArgument
from statehold.replication import holding
from statehold.replication.points import common_base, make_point, newest, parse_point
from statehold.replication.state import CopyState, PeerState, Role, StateStore
from statehold.replication.wire import (
    MAX_PAYLOAD,
    Extent,
    Frame,
    StreamDigest,
    StreamHeader,
    Zero,
    check,
)

log = logging.getLogger("statehold.replication.sending")

_ZEROS = bytes(MAX_PAYLOAD)
DIRECT_ALIGN = 4096
READ_WINDOW = 4 * MAX_PAYLOAD
"""Bytes one direct read of a point snapshot fetches at most (several frames' worth)."""


class SnapshotReader:
    """Reads a point snapshot, bypassing the page cache where it can.

    A point is read once, from start to end: caching it only costs (new page-cache pages,
    then a copy out of them, measured as the largest CPU cost of a primary's agent in
    docs/benchmarks.md, replication). With ``O_DIRECT``, aligned ranges are read into one
    reused page-aligned window of up to :data:`READ_WINDOW` bytes, never past the end of
    the range being sent, and each frame's bytes are copied out of it. Unaligned reads, or
    a filesystem without direct I/O: plain ``pread`` from then on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = open_readonly(path)
        self._window: mmap.mmap | None = None
        self._start = self._end = 0  # file range the window holds
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:  # no direct I/O on this filesystem
            return
        self._flags = flags
        self._window = mmap.mmap(-1, READ_WINDOW)

    @property
    def direct(self) -> bool:
        return self._window is not None

    def read(self, pos: int, length: int, limit: int) -> bytes:
        """``length`` bytes at ``pos`` (Corrupt if the file is shorter); ``limit``: the end
        of the range this read belongs to, which read-ahead does not pass."""
        window = self._window
        if window is not None and (pos % DIRECT_ALIGN or length % DIRECT_ALIGN
                                   or limit % DIRECT_ALIGN):
            self._buffered()  # unaligned: buffered from now on
        elif window is not None:
            if not (self._start <= pos and pos + length <= self._end):
                self._fill(window, pos, min(READ_WINDOW, max(limit, pos + length) - pos))
            if self._window is not None and self._start <= pos and pos + length <= self._end:
                return window[pos - self._start:pos - self._start + length]
        data = os.pread(self.fd, length, pos)  # buffered, or a file that ends short of it
        if len(data) != length:
            raise Corrupt(f"{self.path}: short read at {pos} ({len(data)} of {length} bytes)")
        return data

    def _fill(self, window: mmap.mmap, pos: int, want: int) -> None:
        self._start = self._end = 0
        with memoryview(window) as view, view[:want] as part:
            try:
                got = os.preadv(self.fd, [part], pos)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                got = -1
        if got < 0:  # this filesystem wants another alignment
            self._buffered()
        else:
            self._start, self._end = pos, pos + got

    def _buffered(self) -> None:
        if self._window is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            self._window.close()
            self._window = None

    def close(self) -> None:
        self._buffered()
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Arguments of the next :meth:`Sender.open` for one peer."""

    base: str | None          # common base; None for a seed
    resume_from: int = 0      # > 0: resume the peer's interrupted seed
    point: str | None = None  # the point to resend (a resumed seed), or None for a new one


def plan_stream(held: Sequence[str], peer: PeerState, remote: CopyState) -> tuple[str | None,
                                                                                    StreamPlan]:
    """(point to record as acknowledged by the peer or None, next stream). Pure.

    A replica whose point is one of ours that the peer state does not show as acknowledged
    applied it and lost the ack: accept it. Then prefer a diff from the newest common point,
    then the resume of a seed of a point we still hold, then a new seed.
    """
    acked = None
    if (remote.role is Role.REPLICA and remote.point is not None and remote.point in held
            and (peer.acked is None or parse_point(remote.point) > parse_point(peer.acked))):
        acked = remote.point
    base = common_base(held, remote.points)
    if base is not None:
        return acked, StreamPlan(base=base)
    seed = remote.seed
    if seed is not None and seed.offset > 0 and seed.point in held:
        return acked, StreamPlan(base=None, resume_from=seed.offset, point=seed.point)
    return acked, StreamPlan(base=None)


def _is_zero(data: bytes) -> bool:
    return data == _ZEROS if len(data) == MAX_PAYLOAD else data.count(0) == len(data)


def _counted(digest: StreamDigest, frame: Extent | Zero) -> Extent | Zero:
    digest.add(frame)
    return frame


def frames(header: StreamHeader, path: Path,
           ranges: Sequence[tuple[int, int]]) -> Generator[Frame, None, None]:
    """Header, the frames of ``ranges`` of ``path`` (from ``resume_from``), end.

    ``ranges`` must be sorted and merged. A seed (no base) omits all-zero chunks.
    """
    check(header)
    digest = StreamDigest(header)
    seed = header.base is None
    yield header
    reader = SnapshotReader(path)
    try:
        for off, length in ranges:
            pos, end = max(off, header.resume_from), min(off + length, header.size)
            zeros: tuple[int, int] | None = None  # a run of zero chunks not yet sent
            while pos < end:
                cut = min(end, (pos // MAX_PAYLOAD + 1) * MAX_PAYLOAD)
                data = reader.read(pos, cut - pos, end)
                if _is_zero(data):
                    if not seed:
                        zeros = (zeros[0] if zeros else pos, cut)
                else:
                    if zeros:
                        yield _counted(digest, Zero(zeros[0], zeros[1] - zeros[0]))
                        zeros = None
                    yield _counted(digest, Extent.of(pos, data))
                pos = cut
            if zeros:
                yield _counted(digest, Zero(zeros[0], zeros[1] - zeros[0]))
    finally:
        reader.close()
    yield digest.end()


def _check_primary(state: CopyState, epoch: int) -> None:
    if state.role is Role.PRIMARY and state.epoch == epoch:
        return
    if state.epoch > epoch or state.role is Role.STALE:
        raise Fenced(f"volume {state.volume!r}: this copy knows epoch {state.epoch} "
                     f"({state.role}); a stream at epoch {epoch} is refused")
    raise FailedPrecondition(f"volume {state.volume!r} is not the primary at epoch {epoch} "
                             f"(role {state.role}, epoch {state.epoch}): promote it first")


class Sender:
    """Streams points of one primary volume to its peers.

    Callers serialise streams per peer; state changes hold the volume's replication lock
    (Aborted when another process or thread holds it).
    """

    def __init__(self, pool: Pool, volume: str) -> None:
        self.pool = pool
        self.volume = validate_name(volume, what="volume name")
        self.store = StateStore(pool.meta_dir, pool.work_dir)

    def state(self) -> CopyState:
        return self.store.load(self.volume)

    def points(self) -> list[str]:
        """Points this copy holds (listed, snapshot present), oldest first."""
        return sorted(holding.held(self.pool, self.state()), key=parse_point)

    def plan(self, remote: CopyState, *, peer: str = "") -> StreamPlan:
        """The next stream to ``peer`` given its :meth:`Receiver.state`; accepts a lost ack.

        Fenced when the peer knows a newer epoch than this copy.
        """
        if remote.volume != self.volume:
            raise InvalidArgument(f"peer state is of volume {remote.volume!r}, not {self.volume!r}")
        with self.store.locked(self.volume):
            state = holding.settle(self.pool, self.store, self.store.load(self.volume))
            if remote.epoch > state.epoch:
                raise Fenced(f"volume {self.volume!r}: peer {peer!r} knows epoch {remote.epoch}, "
                             f"this copy {state.epoch}")
            held = holding.held(self.pool, state)
            acked, plan = plan_stream(held, state.peers.get(peer, PeerState()), remote)
            if acked is not None:
                self._acknowledge(state, acked, peer)
        return plan

    def open(self, *, epoch: int, base: str | None, resume_from: int = 0,
             point: str | None = None, peer: str = "") -> Generator[Frame, None, None]:
        """Take (or reuse) a point and return the frames that bring ``peer`` to it.

        ``base``: a point the peer holds (a diff), or None (a seed). ``resume_from`` > 0
        resumes the peer's interrupted seed with the same point (``point``, or the one last
        sent to ``peer`` from no base). Errors before the first frame: Fenced (not the
        primary at ``epoch``), FailedPrecondition (base or point not held), NotFound.
        The generator reads the point snapshot lazily; ``close()`` it to abandon a stream.
        """
        if base is not None:
            parse_point(base)
            if resume_from:
                raise InvalidArgument("only a seed (no base) may resume")
        with self.store.locked(self.volume):
            state = holding.settle(self.pool, self.store, self.store.load(self.volume))
            _check_primary(state, epoch)
            self.pool.get_volume(self.volume)
            held = holding.held(self.pool, state)
            if base is not None and base not in held:
                raise FailedPrecondition(
                    f"volume {self.volume!r}: base point {base} is not held here; seed instead")
            peer_state = state.peers.get(peer, PeerState())
            if point is None and resume_from:
                point = peer_state.sending if peer_state.base is None else None
                if point is None:
                    raise FailedPrecondition(
                        f"volume {self.volume!r}: no interrupted seed to {peer!r} to resume")
            if point is not None:
                if point not in held:
                    raise FailedPrecondition(f"volume {self.volume!r}: point {point} is not held")
            else:
                # the base is marked first: collecting after the take must not drop it
                state = self.store.save(state, peers={
                    **state.peers, peer: PeerState(peer_state.acked, peer_state.sending, base)})
                state, point = self._take(state, epoch)
            if base is not None and parse_point(base) >= parse_point(point):
                raise InvalidArgument(f"base {base} is not older than point {point}")
            state = self.store.save(state, peers={
                **state.peers, peer: PeerState(peer_state.acked, point, base)})
            holding.collect(self.pool, self.store, state)
            snap = holding.path(self.pool, self.volume, point)
            size = os.stat(snap).st_size
            ranges = (changed_ranges(holding.path(self.pool, self.volume, base), snap)
                      if base is not None else merge(data_ranges(snap)))
        header = StreamHeader(volume=self.volume, epoch=epoch, base=base, point=point, size=size,
                              resume_from=resume_from)
        check(header)
        log.info("replication stream opened volume=%s/%s peer=%s point=%s base=%s resume_from=%d "
                 "ranges=%d range_bytes=%d", self.pool.name, self.volume, peer, point, base,
                 resume_from, len(ranges), total(ranges))
        return frames(header, snap, ranges)

    def acknowledged(self, point: str, *, peer: str = "") -> None:
        """``peer`` holds ``point`` now: it becomes that peer's base; unneeded points go."""
        parse_point(point)
        with self.store.locked(self.volume):
            self._acknowledge(self.store.load(self.volume), point, peer)

    def forget_peer(self, peer: str) -> None:
        """Stop keeping points for ``peer`` (a replica released or re-placed)."""
        with self.store.locked(self.volume):
            state = self.store.load(self.volume)
            peers = {k: v for k, v in state.peers.items() if k != peer}
            holding.collect(self.pool, self.store, self.store.save(state, peers=peers))

    def release_fork(self) -> None:
        """Stop keeping the points held at promotion (the old primary resynced or is gone)."""
        with self.store.locked(self.volume):
            state = self.store.load(self.volume)
            holding.collect(self.pool, self.store, self.store.save(state, fork=None))

    # -- internals (the lock is held) -------------------------------------------------------
    def _take(self, state: CopyState, epoch: int) -> tuple[CopyState, str]:
        # list the point (and spend its seq) before the snapshot exists: a crash in between
        # leaves a listed point without a snapshot, which settle() unlists; never a snapshot
        # nobody lists, and never a seq used twice
        point = make_point(epoch, state.seq + 1)
        state = self.store.save(state, seq=state.seq + 1, points=(*state.points, point),
                                pending=point)
        self.pool.fault("replication.point.listed")
        holding.take(self.pool, self.volume, point, freeze=True)
        self.pool.fault("replication.point.taken")
        return state, point

    def _acknowledge(self, state: CopyState, point: str, peer: str) -> None:
        if point not in state.points:
            raise FailedPrecondition(f"volume {self.volume!r}: point {point} is not one of ours")
        old = state.peers.get(peer, PeerState())
        sending = None if old.sending == point else old.sending
        peers = {**state.peers, peer: PeerState(acked=newest([old.acked, point]), sending=sending,
                                                base=old.base if sending else None)}
        state = self.store.save(state, peers=peers, point=newest([state.point, point]),
                                pending=None if state.pending == point else state.pending)
        holding.collect(self.pool, self.store, state)
        log.info("replication point acknowledged volume=%s/%s peer=%s point=%s", self.pool.name,
                 self.volume, peer, point)
