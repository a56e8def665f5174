"""Copy state: JSON round trip, refusal of newer or damaged files, retention, the lock."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statehold.errors import Aborted, Corrupt, FailedPrecondition
from statehold.replication.state import (
    Commit,
    CopyState,
    PeerState,
    Role,
    SeedProgress,
    StateStore,
    retained,
)

points = st.builds(lambda e, s: f"e{e}-{s}", st.integers(1, 50), st.integers(1, 50))
opt_points = st.none() | points
states = st.builds(
    CopyState,
    volume=st.just("vol"),
    role=st.sampled_from(Role),
    epoch=st.integers(0, 1 << 40),
    seq=st.integers(0, 1 << 40),
    point=opt_points, pending=opt_points, fork=opt_points,
    points=st.lists(points, unique=True).map(tuple),
    peers=st.dictionaries(st.text(max_size=8), st.builds(PeerState, opt_points, opt_points,
                                                        opt_points), max_size=3),
    seed=st.none() | st.builds(SeedProgress, points, st.integers(0, 9), st.integers(1, 1 << 40),
                               st.integers(0, 1 << 40)),
    committing=st.none() | st.builds(Commit, points, st.integers(1, 9), st.integers(1, 1 << 40),
                                     st.integers(0, 1 << 40), opt_points),
    updated_at=st.floats(0, 1e10),
)


@given(states)
def test_state_json_round_trips(state: CopyState) -> None:
    assert CopyState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_newer_version_is_refused_and_garbage_is_corrupt() -> None:
    raw = CopyState("vol").to_json()
    with pytest.raises(FailedPrecondition):
        CopyState.from_json({**raw, "version": 2})
    with pytest.raises(Corrupt):
        CopyState.from_json({**raw, "role": "king"})
    with pytest.raises(Corrupt):
        CopyState.from_json({**raw, "points": ["nope"]})
    with pytest.raises(Corrupt):
        CopyState.from_json({k: v for k, v in raw.items() if k != "epoch"})


def test_store_saves_atomically_and_reads_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load("vol") == CopyState("vol")
    saved = store.save(CopyState("vol"), role=Role.PRIMARY, epoch=3, points=("e3-1",))
    assert store.load("vol") == saved
    assert not list(store.dir.glob("*.tmp"))
    store.path("vol").write_text("{")
    with pytest.raises(Corrupt):
        store.load("vol")


def test_a_held_lock_makes_others_abort(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.locked("vol"):
        with pytest.raises(Aborted), store.locked("vol", wait=0):
            pass
        with store.locked("other"):
            pass
    with store.locked("vol"):
        pass


def test_threads_queue_for_the_lock(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    order: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.locked("vol"):
            entered.set()
            release.wait()
            order.append("first")

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait()
    release.set()
    with store.locked("vol"):  # waits for the holder instead of failing
        order.append("second")
    thread.join()
    assert order == ["first", "second"]


def test_another_process_holding_the_lock_aborts_at_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.locked("vol"):
        pass
    fd = os.open(store.dir / "vol.lock", os.O_RDWR)  # its own open file description
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Aborted, match="process"), store.locked("vol"):
            pass
    finally:
        os.close(fd)


def test_primary_keeps_newest_fork_and_every_peer_point() -> None:
    state = CopyState("v", role=Role.PRIMARY, epoch=2, fork="e1-5",
                      points=("e1-4", "e1-5", "e2-1", "e2-2", "e2-3", "e2-4"),
                      peers={"a": PeerState(acked="e2-1"), "b": PeerState(sending="e2-2", base="e1-5")})
    assert retained(state) == {"e1-4", "e1-5", "e2-1", "e2-2", "e2-4"}
    released = CopyState("v", role=Role.PRIMARY, epoch=2, points=("e1-4", "e1-5", "e2-4"))
    assert retained(released) == {"e2-4"}


def test_replica_keeps_its_two_newest_and_stale_keeps_all() -> None:
    points = ("e1-10", "e1-9", "e1-2")
    assert retained(CopyState("v", role=Role.REPLICA, point="e1-10", points=points)) == {
        "e1-10", "e1-9"}
    assert retained(CopyState("v", role=Role.STALE, points=points)) == set(points)
