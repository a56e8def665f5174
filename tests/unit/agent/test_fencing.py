"""The agent's own fencing (agent/fencing.py): the verdict table, which record is a copy's,
the pass over local copies, the replication loop's gate and the API's view."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from statehold.agent.copies import CopyView, VolumeRef
from statehold.agent.fencing import (
    CONFIRMED,
    FENCED,
    HELD,
    Fencing,
    GatedCopies,
    LocalCopies,
    Records,
    WatchfulCopies,
    judge,
    record_for,
)
from statehold.errors import Aborted, FailedPrecondition, Unavailable
from statehold.replication.cluster import Record
from tests.unit.agent.memory_copies import MemoryCopies

A = VolumeRef("pool-a", "db")


def rec(epoch: int, primary: str, handle: str = "pool-a/db") -> Record:
    return Record(volume=handle, epoch=epoch, primary=primary)


@pytest.mark.parametrize(("epoch", "record", "outcome", "fence_at"), [
    (1, rec(1, "n1"), CONFIRMED, 1),
    (1, rec(2, "n2"), FENCED, 2),      # failed over while n1 was away
    (2, rec(2, "n2"), FENCED, 2),      # another primary at the same epoch
    (1, rec(3, "n1"), HELD, 1),        # recorded back to n1: the controller promotes it
    (3, rec(2, "n2"), HELD, 3),        # the record is older than the copy: not judged by it
    (3, rec(2, "n1"), HELD, 3),
    (1, None, HELD, 1),                # no record (not recorded yet, or retired)
    (1, rec(0, ""), HELD, 1),          # a record with no primary yet
])
def test_the_verdict_table(epoch: int, record: Record | None, outcome: str, fence_at: int) -> None:
    verdict = judge("n1", epoch, record)
    assert (verdict.outcome, verdict.epoch) == (outcome, fence_at)


def test_the_record_of_a_copy_is_found_by_engine_name_and_the_handle_pool_breaks_ties() -> None:
    mine, other = rec(1, "n1", "pool-a/db"), rec(1, "n2", "pool-b/db")
    assert record_for(VolumeRef("pool-c", "db"), [rec(1, "n1", "pool-a/xx"), mine]) is mine
    assert record_for(VolumeRef("pool-a", "db"), [mine, other]) is mine
    assert record_for(VolumeRef("pool-c", "db"), [mine, other]) is None  # ambiguous: held
    assert record_for(VolumeRef("pool-c", "db"), []) is None


@dataclass
class Local:
    """LocalCopies over plain dicts: roles and epochs, which copies are in use, seals."""

    views: dict[VolumeRef, CopyView] = field(default_factory=dict)
    used: set[VolumeRef] = field(default_factory=set)
    sealed: list[VolumeRef] = field(default_factory=list)
    locked: set[VolumeRef] = field(default_factory=set)

    def local_copies(self) -> list[VolumeRef]:
        return sorted(self.views, key=str)

    def state(self, volume: VolumeRef) -> CopyView:
        return self.views[volume]

    def fence(self, volume: VolumeRef, epoch: int) -> CopyView:
        if volume in self.locked:
            raise Aborted("a stream holds the lock")
        self.views[volume] = CopyView("stale", epoch, self.views[volume].point)
        return self.views[volume]

    def in_use(self, volume: VolumeRef) -> bool:
        return volume in self.used

    def seal(self, volume: VolumeRef) -> bool:
        self.sealed.append(volume)
        return True


def test_local_copies_satisfy_the_protocol() -> None:
    assert isinstance(Local(), LocalCopies)
    assert not isinstance(MemoryCopies(), LocalCopies)


def reader(*records: Record) -> tuple[list[Sequence[Record] | Exception], Records]:
    box: list[Sequence[Record] | Exception] = [list(records)]

    def read() -> Sequence[Record]:
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]
    return box, read


def test_a_pass_confirms_fences_and_holds_and_seals_fenced_copies_in_use() -> None:
    b, c = VolumeRef("pool-a", "b"), VolumeRef("pool-a", "c")
    local = Local(views={A: CopyView("primary", 1, "e1-3"), b: CopyView("primary", 1, "e1-2"),
                         c: CopyView("primary", 4, "e4-1")}, used={b})
    _box, read = reader(rec(1, "n1"), rec(2, "n2", "pool-a/b"), rec(3, "n1", "pool-a/c"))
    fencing = Fencing("n1", local, read)
    verdicts = fencing.check()
    assert {v: verdicts[v].outcome for v in verdicts} == {A: CONFIRMED, b: FENCED, c: HELD}
    assert fencing.allows(A, 1) and not fencing.allows(b, 1) and not fencing.allows(c, 4)
    assert (local.views[b].role, local.views[b].epoch) == ("stale", 2)
    assert local.sealed == [b]
    # a later pass: the stale copy still in use is sealed again (idempotent), A stays confirmed
    fencing.check()
    assert local.sealed == [b, b] and fencing.allows(A, 1)


def test_unreadable_records_hold_every_unconfirmed_primary_until_they_can_be_read() -> None:
    local = Local(views={A: CopyView("primary", 1, "e1-3")})
    box, read = reader(rec(1, "n1"))
    box[0] = Unavailable("the API server does not answer")
    fencing = Fencing("n1", local, read)
    assert fencing.check()[A].outcome == HELD and not fencing.allows(A, 1)
    assert local.views[A].role == "primary"  # nothing changed on disk
    box[0] = [rec(1, "n1")]
    assert fencing.check()[A].outcome == CONFIRMED and fencing.allows(A, 1)
    box[0] = Unavailable("away again")  # an outage later does not stop a confirmed primary
    fencing.check()
    assert fencing.allows(A, 1)


def test_a_copy_whose_lock_is_held_is_left_for_the_next_pass() -> None:
    local = Local(views={A: CopyView("primary", 1, "e1-3")}, locked={A})
    _box, read = reader(rec(2, "n2"))
    fencing = Fencing("n1", local, read)
    assert fencing.check()[A].outcome == HELD
    local.locked.clear()
    assert fencing.check()[A].outcome == FENCED and local.views[A].role == "stale"


def test_standalone_confirms_every_primary() -> None:
    fencing = Fencing("n1", Local(views={A: CopyView("primary", 1, "")}), None)
    assert fencing.allows(A, 1) and fencing.allows(A, 7)


def test_the_loop_runs_its_first_pass_before_start_returns() -> None:
    local = Local(views={A: CopyView("primary", 2, "e2-1")})
    _box, read = reader(rec(3, "n2"))
    fencing = Fencing("n1", local, read, interval=60, retry=60)
    stop = threading.Event()
    try:
        assert fencing.start(stop, wait=30)
        assert (local.views[A].role, local.views[A].epoch) == ("stale", 3)
    finally:
        stop.set()
        fencing.join(10)


def test_the_gate_refuses_an_unconfirmed_primary_and_promote_confirms_it() -> None:
    memory = MemoryCopies()
    ref = memory.add("pool-a/db", "primary", b"x" * 10, epoch=1)
    _box, read = reader()  # no record at all
    fencing = Fencing("n1", None, read)
    gated, api = GatedCopies(memory, fencing), WatchfulCopies(memory, fencing)
    with pytest.raises(FailedPrecondition, match="not confirmed"):
        gated.state(ref)
    assert api.state(ref).role == "primary"  # the API still reports it as it is
    api.promote(ref, 2)  # the controller recorded epoch 2 first
    assert gated.state(ref).epoch == 2
    with pytest.raises(FailedPrecondition):
        gated.stream(ref, epoch=1, remote=CopyView("replica", 1, ""), peer="n2")
    api.demote(ref, 3)  # demoted: nothing left confirmed for it
    assert not fencing.allows(ref, 2)


class StaleOnDemote(MemoryCopies):
    """A primary demoted turns stale, as the core's does."""

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView:
        super().demote(volume, epoch)
        self.copies[volume].role = "stale"
        return self.state(volume)


def test_a_demote_through_the_api_seals_the_copy_in_use() -> None:
    local = Local(views={A: CopyView("primary", 1, "e1-3")}, used={A})
    memory = StaleOnDemote()
    memory.add("pool-a/db", "primary", b"x", epoch=1)
    fencing = Fencing("n1", local, None)
    assert WatchfulCopies(memory, fencing).demote(A, 2).role == "stale"
    assert local.sealed == [A]


def test_a_replica_in_use_is_left_alone() -> None:
    local = Local(views={A: CopyView("replica", 1, "e1-3")}, used={A})
    Fencing("n1", local, None).check()
    assert local.sealed == []
