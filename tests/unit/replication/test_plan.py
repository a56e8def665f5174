"""Choosing the next stream for a peer from its reported state (pure)."""

from __future__ import annotations

from statehold.replication.sending import StreamPlan, plan_stream
from statehold.replication.state import CopyState, PeerState, Role, SeedProgress


def test_diff_from_the_newest_common_point() -> None:
    remote = CopyState("v", role=Role.REPLICA, epoch=1, point="e1-3", points=("e1-2", "e1-3"))
    acked, plan = plan_stream(["e1-2", "e1-3", "e1-4"], PeerState(acked="e1-3"), remote)
    assert acked is None
    assert plan == StreamPlan(base="e1-3")


def test_a_lost_ack_is_accepted_before_planning() -> None:
    remote = CopyState("v", role=Role.REPLICA, epoch=1, point="e1-4", points=("e1-3", "e1-4"))
    acked, plan = plan_stream(["e1-3", "e1-4"], PeerState(acked="e1-3", sending="e1-4"), remote)
    assert acked == "e1-4"
    assert plan == StreamPlan(base="e1-4")


def test_an_interrupted_seed_of_a_held_point_resumes() -> None:
    remote = CopyState("v", role=Role.SEEDING, epoch=1,
                       seed=SeedProgress("e1-2", 1, 1 << 30, 5 << 20))
    _, plan = plan_stream(["e1-2", "e1-3"], PeerState(sending="e1-2"), remote)
    assert plan == StreamPlan(base=None, resume_from=5 << 20, point="e1-2")


def test_seed_when_nothing_is_shared_or_resumable() -> None:
    remote = CopyState("v", role=Role.SEEDING, epoch=1, seed=SeedProgress("e1-1", 1, 1 << 30, 0))
    assert plan_stream(["e1-2"], PeerState(), remote)[1] == StreamPlan(base=None)
    gone = CopyState("v", role=Role.SEEDING, epoch=1, seed=SeedProgress("e1-1", 1, 1 << 30, 9))
    assert plan_stream(["e1-2"], PeerState(), gone)[1] == StreamPlan(base=None)


def test_a_stale_old_primary_resyncs_from_the_fork_point() -> None:
    remote = CopyState("v", role=Role.STALE, epoch=2, point="e1-5", points=("e1-5", "e1-6"))
    _, plan = plan_stream(["e1-4", "e1-5", "e2-1"], PeerState(), remote)
    assert plan == StreamPlan(base="e1-5")
