"""The replication loop of a primary: every interval, each volume to each of its replicas.

For a volume whose local copy is primary (the core says so) and a replica listed in the
:class:`~statehold.agent.book.ReplicaBook`, one *sync* is:

1. ask the replica's agent for its copy's state (``CopyStatus``) and check that it speaks
   our wire version; a node without a copy is asked to create an empty one with our
   volume's spec (``CreateCopy``): the stream is then a seed;
2. let the core plan and open the stream from that state (``Copies.stream``: a diff from
   the newest common point, the resume of an interrupted seed, or a new seed; the core
   snapshots and reads lazily) and send it (``Replicate``) frame by frame, counting bytes;
3. on the replica's Ack, tell the core the peer acknowledged the point (it may drop older
   snapshots) and record the point's time: the replica's lag is the age of that time.

A failed sync (peer down, link cut, fenced epoch, checksum) is logged with its reason,
kept as ``last_error`` and retried at the next cycle; it never stops the loop or the other
replicas. Syncs run one at a time: a cycle's cost is the sum of the changes, and two
streams of one volume never compete for its snapshots. A cycle takes one point: the first
stream takes it, the other replicas are brought to the same one.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from statehold.agent.book import Peer, ReplicaBook
from statehold.agent.copies import Applied, Copies, CopyView, Outgoing, VolumeRef, VolumeSpec
from statehold.agent.feed import Prefetch
from statehold.agent.metrics import AgentMetrics
from statehold.agent.pause import NO_PAUSE, Pauser
from statehold.errors import FailedPrecondition, StateholdError

log = logging.getLogger("statehold.agent.replicator")

_M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
FRAME_HEAP = 32 << 20
"""Free heap memory glibc may keep for the next frames instead of giving it back (bytes)."""


def keep_frame_buffers() -> bool:
    """Let glibc reuse the memory of frames instead of mapping it afresh for each one.

    An agent moves every replicated byte through buffers of about 1 MiB (the frames, and
    gRPC's own copies of them). With glibc's defaults most such buffers are fresh ``mmap``
    or trimmed heap: each costs 256 page faults and the zeroing of a megabyte, which
    measured (docs/benchmarks.md, replication) as half the CPU of reading, encoding and
    decoding a stream and a quarter of gRPC's receiving side. Buffers up to 4 MiB now come
    from the heap, which keeps up to :data:`FRAME_HEAP` free for the next ones. Process
    wide, idempotent; False where the C library has no ``mallopt`` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, 4 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, FRAME_HEAP))


class PeerAgent(Protocol):
    """What the loop needs of a replica's agent (``AgentClient`` in production)."""

    def state(self, volume: VolumeRef) -> tuple[CopyView | None, tuple[int, ...]]:
        """The copy's state (None: the peer has none) and the wire versions it speaks."""
        ...

    def create_copy(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView: ...

    def replicate(self, volume: VolumeRef, frames: Iterator[bytes]) -> Applied: ...


@dataclass
class _Progress:
    point: str = ""
    taken_at: float = 0.0        # unix time the acknowledged point was taken
    sent_bytes: int = 0
    last_error: str = ""
    syncing: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """What the primary knows of one replica of one volume."""

    node: str
    address: str
    pool: str
    point: str
    acknowledged_at: float
    lag_seconds: float           # 0 until a first point is acknowledged
    sent_bytes: int
    last_error: str
    syncing: bool


class Replicator:
    def __init__(self, copies: Copies, book: ReplicaBook, connect: Callable[[Peer], PeerAgent], *,
                 interval: float = 5.0, pauser: Pauser = NO_PAUSE, prefetch: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self.copies = copies
        self.book = book
        self.connect = connect
        self.interval = interval
        self.prefetch = prefetch
        self.pauser = pauser
        self.clock = clock
        self.metrics = AgentMetrics(self._lags, self._rpos)
        self._lock = threading.Lock()
        self._progress: dict[tuple[VolumeRef, str], _Progress] = {}
        self._volume_locks: dict[VolumeRef, threading.Lock] = {}
        keep_frame_buffers()  # the agent's process sends and receives streams

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Cycle every ``interval`` until ``stop`` is set (first cycle at once)."""
        while not stop.is_set():
            started = time.monotonic()
            self.cycle()
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def cycle(self) -> int:
        """One pass over every primary volume and its replicas; returns the syncs that
        succeeded."""
        ok = 0
        for volume, _peers in self.book.items():
            try:
                ok += self._sync_all(volume, only_primary=True)
            except StateholdError as exc:
                log.warning("replication skipped volume=%s error=%s", volume, exc)
        return ok

    def sync_volume(self, volume: VolumeRef) -> list[ReplicaReport]:
        """Stream one primary volume to each of its replicas now; their reports after.
        FailedPrecondition if the local copy is not the primary."""
        self._sync_all(volume, only_primary=False)
        return self.report(volume)

    def _sync_all(self, volume: VolumeRef, *, only_primary: bool) -> int:
        # one volume's syncs never overlap: the loop and a Sync call wait for each other
        with self._volume_lock(volume):
            local = self.copies.state(volume)
            if local.role != "primary":
                if only_primary:  # a replica, or a fenced old primary: nothing to send
                    self._forget(volume)  # and no lag of its own to report any more
                    return 0
                raise FailedPrecondition(f"{volume} is a {local.role} here, not the primary")
            ok, point = 0, None
            for peer in self.book.get(volume):
                # one point per cycle: the first stream takes it, the others reuse it
                done, opened = self._sync(volume, local.epoch, peer, point)
                ok, point = ok + done, point or opened
            return ok

    def _volume_lock(self, volume: VolumeRef) -> threading.Lock:
        with self._lock:
            return self._volume_locks.setdefault(volume, threading.Lock())

    def sync(self, volume: VolumeRef, epoch: int, peer: Peer) -> bool:
        """Bring one replica up to a new point; False (and ``last_error``) if it failed."""
        return self._sync(volume, epoch, peer, None)[0]

    def _sync(self, volume: VolumeRef, epoch: int, peer: Peer, point: str | None) -> tuple[bool, str | None]:
        """(acknowledged?, the point streamed or None); ``point``: one to reuse."""
        progress = self._entry(volume, peer.node)
        out: Outgoing | None = None
        with self._lock:
            progress.syncing = True
        started = time.monotonic()
        outcome = "failed"
        try:
            agent = self.connect(peer)
            there = peer.volume(volume)
            found, versions = agent.state(there)
            if not set(versions) & set(self.copies.wire_versions):
                raise FailedPrecondition(f"{peer.node} speaks replication wire versions {list(versions)}, "
                                         f"this agent {list(self.copies.wire_versions)}")
            # no copy there yet: create an empty one like ours; the stream is then a seed
            remote = found or agent.create_copy(there, self.copies.spec(volume))
            out = self.copies.stream(volume, epoch=epoch, remote=remote, peer=peer.node, point=point)
            # read and hash ahead while gRPC sends (and the stream is released, snapshot
            # included, as soon as it is over, whoever ends it)
            ahead = Prefetch(out.frames, self.prefetch, name=f"read-{peer.node}")
            try:
                applied = agent.replicate(there, self._counted(volume, peer, iter(ahead)))
            finally:
                ahead.cancel()
            self.copies.acknowledged(volume, applied.point, peer=peer.node)
            with self._lock:
                progress.point, progress.taken_at, progress.last_error = applied.point, out.taken_at, ""
            outcome = "ok"
            log.info("replicated volume=%s replica=%s point=%s bytes=%d was=%s ms=%.0f",
                     volume, peer.node, applied.point, applied.bytes, remote.point or "-",
                     (time.monotonic() - started) * 1000)
            return True, out.point
        except StateholdError as exc:
            with self._lock:
                progress.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("replication failed volume=%s replica=%s error=%s", volume, peer.node, exc)
        except Exception as exc:  # a bug must not stop the loop for every other volume
            with self._lock:
                progress.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("replication failed volume=%s replica=%s", volume, peer.node)
        finally:
            with self._lock:
                progress.syncing = False
            self.metrics.cycles.labels(str(volume), peer.node, outcome).inc()
        return False, out.point if out is not None else None

    def _counted(self, volume: VolumeRef, peer: Peer, frames: Iterator[bytes]) -> Iterator[bytes]:
        progress = self._entry(volume, peer.node)
        counter = self.metrics.sent_bytes.labels(str(volume), peer.node)
        for index, data in enumerate(frames):
            self.pauser.point(f"send.{index}")
            with self._lock:
                progress.sent_bytes += len(data)
            counter.inc(len(data))
            yield data

    # -- what CopyStatus and the metrics show ----------------------------------------------
    def _entry(self, volume: VolumeRef, node: str) -> _Progress:
        with self._lock:
            return self._progress.setdefault((volume, node), _Progress())

    def report(self, volume: VolumeRef) -> list[ReplicaReport]:
        now = self.clock()
        out = []
        for peer in self.book.get(volume):
            with self._lock:
                p = self._progress.get((volume, peer.node), _Progress())
                lag = max(0.0, now - p.taken_at) if p.taken_at else 0.0
                out.append(ReplicaReport(peer.node, peer.address, peer.volume(volume).pool, p.point,
                                         p.taken_at, lag,
                                         p.sent_bytes, p.last_error, p.syncing))
        return out

    def _forget(self, volume: VolumeRef) -> None:
        with self._lock:
            for key in [k for k in self._progress if k[0] == volume]:
                del self._progress[key]

    def _rpos(self) -> list[tuple[str, int]]:
        """The RPO of each volume streamed from here (as its lag is): not of one demoted here."""
        with self._lock:
            streamed = {v for v, _node in self._progress}
        return [(str(v), rpo) for v, _peers in self.book.items()
                if v in streamed and (rpo := self.book.rpo(v))]

    def _lags(self) -> list[tuple[str, str, float]]:
        """Lag of each replica the book lists now: a replica released, or a volume no longer
        streamed from here, stops being reported (its age would grow forever and alert)."""
        now = self.clock()
        listed = {(v, p.node) for v, peers in self.book.items() for p in peers}
        with self._lock:
            items = sorted(self._progress.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
            return [(str(v), node, max(0.0, now - p.taken_at)) for (v, node), p in items
                    if p.taken_at and (v, node) in listed]
