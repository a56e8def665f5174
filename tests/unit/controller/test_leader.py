"""Lease leader election: pure decisions and two candidates racing on the in-memory API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from statehold.controller.leader import LeaderElector, decide, micro
from statehold.kube.kinds import LEASE
from statehold.kube.memory import MemoryKube

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("spec", "now_s", "expected"), [
    (None, 0, "create"),
    ({"holderIdentity": "me", "renewTime": micro(T0), "leaseDurationSeconds": 15}, 5, "renew"),
    ({"holderIdentity": "other", "renewTime": micro(T0), "leaseDurationSeconds": 15}, 10, "wait"),
    ({"holderIdentity": "other", "renewTime": micro(T0), "leaseDurationSeconds": 15}, 16, "acquire"),
    ({"holderIdentity": "", "renewTime": micro(T0), "leaseDurationSeconds": 15}, 1, "acquire"),
])
def test_decide(spec: dict[str, Any] | None, now_s: int, expected: str) -> None:
    now = T0.replace(second=now_s % 60, minute=now_s // 60)
    assert decide(spec, "me", now) == expected


def test_one_leader_until_it_stops_renewing(fake_clock: Any) -> None:
    kube = MemoryKube(now=fake_clock)
    a = LeaderElector(kube, "ns", "op", "a", fake_clock, duration=15)
    b = LeaderElector(kube, "ns", "op", "b", fake_clock, duration=15)
    assert a.try_acquire() and not b.try_acquire()
    fake_clock.advance(seconds=10)
    assert a.try_acquire() and not b.try_acquire()       # renewed
    fake_clock.advance(seconds=16)                        # a stopped renewing
    assert b.try_acquire() and not a.try_acquire()
    lease = kube.get(LEASE, "op", "ns")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1


def test_stale_read_loses_the_race(fake_clock: Any) -> None:
    kube = MemoryKube(now=fake_clock)
    a = LeaderElector(kube, "ns", "op", "a", fake_clock)
    assert a.try_acquire()
    fake_clock.advance(seconds=30)
    stale = kube.get(LEASE, "op", "ns")
    assert LeaderElector(kube, "ns", "op", "b", fake_clock).try_acquire()
    stale["spec"]["holderIdentity"] = "c"
    from statehold.errors import Aborted

    with pytest.raises(Aborted):
        kube.replace(stale)


def test_release_lets_the_other_take_over_at_once(fake_clock: Any) -> None:
    kube = MemoryKube(now=fake_clock)
    a = LeaderElector(kube, "ns", "op", "a", fake_clock)
    b = LeaderElector(kube, "ns", "op", "b", fake_clock)
    assert a.try_acquire()
    a.release()
    assert b.try_acquire()
