"""Point snapshots a copy holds: taking, checking and dropping them through the engine.

Every point snapshot is an ordinary engine snapshot (made and deleted by the engine's own
crash-safe operations) named ``rp-<hash>-<point>``. A copy lists its points in its state
*before* it takes a snapshot and unlists them only *after* deleting one, so it never loses
track of a snapshot it made; a listed point whose snapshot does not exist (the take was cut
short) is simply not held, and is unlisted by :func:`settle`. The copy's ``point`` keeps
saying what its content is even when that point's snapshot is gone.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from statehold.engine.pool import Pool
from statehold.errors import FailedPrecondition, NotFound
from statehold.replication.points import snapshot_name
from statehold.replication.state import CopyState, PeerState, StateStore, retained, without

log = logging.getLogger("statehold.replication")


def path(pool: Pool, volume: str, point: str) -> Path:
    return pool.snapshot_path(snapshot_name(volume, point))


def exists(pool: Pool, volume: str, point: str) -> bool:
    try:
        snap = pool.get_snapshot(snapshot_name(volume, point))
    except NotFound:
        return False
    return snap.source_volume == volume


def held(pool: Pool, state: CopyState) -> list[str]:
    """The listed points whose snapshot exists."""
    return [p for p in state.points if exists(pool, state.volume, p)]


def take(pool: Pool, volume: str, point: str, *, freeze: bool) -> None:
    """Snapshot the volume as ``point`` (idempotent: the engine returns an existing one)."""
    pool.create_snapshot(volume, snapshot_name(volume, point), freeze=freeze)


def drop(pool: Pool, volume: str, point: str) -> None:
    """Delete the point's snapshot if it is this volume's (a missing one is fine)."""
    if exists(pool, volume, point):
        with contextlib.suppress(NotFound):
            pool.delete_snapshot(snapshot_name(volume, point))


def settle(pool: Pool, store: StateStore, state: CopyState) -> CopyState:
    """Unlist points whose snapshot does not exist (a take cut short, or removed by hand)."""
    missing = [p for p in state.points if not exists(pool, state.volume, p)]
    if not missing:
        return state
    log.info("replication points unlisted volume=%s/%s points=%s", pool.name, state.volume,
             ",".join(missing))
    peers = {name: PeerState(acked=None if peer.acked in missing else peer.acked,
                              sending=None if peer.sending in missing else peer.sending,
                              base=None if peer.base in missing else peer.base)
             for name, peer in state.peers.items()}
    return store.save(
        state, points=without(state.points, missing), peers=peers,
        pending=None if state.pending in missing else state.pending)


def collect(pool: Pool, store: StateStore, state: CopyState, *,
            keep: set[str] | None = None) -> CopyState:
    """Delete the listed point snapshots the copy does not retain (or not in ``keep``),
    then unlist them.

    A snapshot that cannot go now (attached by someone) stays listed and is retried later.
    """
    if keep is None:
        keep = retained(state)
    dropped: list[str] = []
    for point in state.points:
        if point in keep:
            continue
        try:
            drop(pool, state.volume, point)
        except FailedPrecondition as exc:
            log.warning("replication point kept volume=%s/%s point=%s reason=%s", pool.name,
                        state.volume, point, exc)
            continue
        dropped.append(point)
    if not dropped:
        return state
    return store.save(state, points=without(state.points, dropped))
