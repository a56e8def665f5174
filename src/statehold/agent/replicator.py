"""The replication loop of a primary: every interval, each volume to each of its replicas.

For a volume whose local copy is primary (the core says so) and a replica listed in the
:class:`~statehold.agent.book.ReplicaBook`, one *sync* is:

1. ask the replica's agent for its copy's state (``CopyStatus``; none yet: a seed) and
   check that it speaks our wire version;
2. let the core plan and open the stream from that state (``Copies.stream``: a diff from
   the newest common point, the resume of an interrupted seed, or a new seed; the core
   snapshots and reads lazily) and send it (``Replicate``) frame by frame, counting bytes;
3. on the replica's Ack, tell the core the peer acknowledged the point (it may drop older
   snapshots) and record the point's time: the replica's lag is the age of that time.

A failed sync (peer down, link cut, fenced epoch, checksum) is logged with its reason,
kept as ``last_error`` and retried at the next cycle; it never stops the loop or the other
replicas. Syncs run one at a time: a cycle's cost is the sum of the changes, and two
streams of one volume never compete for its snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from statehold.agent.book import Peer, ReplicaBook
from statehold.agent.copies import Applied, Copies, CopyView, VolumeRef
from statehold.agent.metrics import AgentMetrics
from statehold.agent.pause import NO_PAUSE, Pauser
from statehold.errors import FailedPrecondition, StateholdError

log = logging.getLogger("statehold.agent.replicator")


class PeerAgent(Protocol):
    """What the loop needs of a replica's agent (``AgentClient`` in production)."""

    def state(self, volume: VolumeRef) -> tuple[CopyView | None, tuple[int, ...]]:
        """The copy's state (None: the peer has none) and the wire versions it speaks."""
        ...

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
                 interval: float = 5.0, pauser: Pauser = NO_PAUSE,
                 clock: Callable[[], float] = time.time) -> None:
        self.copies = copies
        self.book = book
        self.connect = connect
        self.interval = interval
        self.pauser = pauser
        self.clock = clock
        self.metrics = AgentMetrics(self._lags)
        self._lock = threading.Lock()
        self._progress: dict[tuple[VolumeRef, str], _Progress] = {}

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
        for volume, peers in self.book.items():
            try:
                local = self.copies.state(volume)
            except StateholdError as exc:
                log.warning("replication skipped volume=%s error=%s", volume, exc)
                continue
            if local.role != "primary":
                continue
            for peer in peers:
                ok += self.sync(volume, local.epoch, peer)
        return ok

    def sync(self, volume: VolumeRef, epoch: int, peer: Peer) -> bool:
        """Bring one replica up to a new point; False (and ``last_error``) if it failed."""
        progress = self._entry(volume, peer.node)
        with self._lock:
            progress.syncing = True
        started = time.monotonic()
        outcome = "failed"
        try:
            agent = self.connect(peer)
            there = peer.volume(volume)
            found, versions = agent.state(there)
            # no copy there yet: a seed, if the peer's core accepts one
            remote = found or CopyView(role="seeding", epoch=0, point="")
            if not set(versions) & set(self.copies.wire_versions):
                raise FailedPrecondition(f"{peer.node} speaks replication wire versions {list(versions)}, "
                                         f"this agent {list(self.copies.wire_versions)}")
            out = self.copies.stream(volume, epoch=epoch, remote=remote, peer=peer.node)
            try:
                applied = agent.replicate(there, self._counted(volume, peer, out.frames))
            finally:
                close = getattr(out.frames, "close", None)
                if close is not None:
                    close()  # a generator releases its snapshot now, not at collection
            self.copies.acknowledged(volume, applied.point, peer=peer.node)
            with self._lock:
                progress.point, progress.taken_at, progress.last_error = applied.point, out.taken_at, ""
            outcome = "ok"
            log.info("replicated volume=%s replica=%s point=%s bytes=%d was=%s ms=%.0f",
                     volume, peer.node, applied.point, applied.bytes, remote.point or "-",
                     (time.monotonic() - started) * 1000)
            return True
        except StateholdError as exc:
            with self._lock:
                progress.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("replication failed volume=%s replica=%s error=%s", volume, peer.node, exc)
            return False
        except Exception as exc:  # a bug must not stop the loop for every other volume
            with self._lock:
                progress.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("replication failed volume=%s replica=%s", volume, peer.node)
            return False
        finally:
            with self._lock:
                progress.syncing = False
            self.metrics.cycles.labels(str(volume), peer.node, outcome).inc()

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

    def _lags(self) -> list[tuple[str, str, float]]:
        now = self.clock()
        with self._lock:
            items = sorted(self._progress.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
            return [(str(v), node, max(0.0, now - p.taken_at)) for (v, node), p in items if p.taken_at]
