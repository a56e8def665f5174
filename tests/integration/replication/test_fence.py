"""``roles.fence``: a copy the cluster record does not name is fenced durably (an agent at
start, docs/design/replication.md §6.3), and resynced afterwards like any stale copy."""

from __future__ import annotations

import random

import pytest

from statehold.engine.types import MiB
from statehold.errors import FailedPrecondition, Fenced
from statehold.replication import Receiver, Role, Sender, roles
from tests.integration.replication.helpers import Pair, make_copies, scribble, sha, sync

pytestmark = pytest.mark.root


def test_a_primary_the_record_does_not_name_is_fenced_for_good_and_resyncs(pair: Pair) -> None:
    name = make_copies(pair, 32 * MiB)
    a, b = pair.a.pool, pair.b.pool
    rng = random.Random(3)
    scribble(a.volume_path(name), rng, 20)
    acked = sync(Sender(a, name), Receiver(b, name), 1)
    scribble(a.volume_path(name), rng, 20)  # writes only the old primary has

    # failover while a was away: the record says epoch 2, b
    roles.promote(b, name, 2)
    fenced = roles.fence(a, name, 2)
    assert (fenced.role, fenced.epoch) == (Role.STALE, 2)
    assert roles.fence(a, name, 2).role is Role.STALE  # idempotent
    with pytest.raises(Fenced):
        roles.check_writable(a, name, 2)
    with pytest.raises(Fenced):  # nor can it stream as the primary of its old epoch
        next(Sender(a, name).open(epoch=1, base=None, peer="b"))
    # the new primary resyncs it from the common point; its own writes are discarded
    scribble(b.volume_path(name), rng, 10)
    ack = sync(Sender(b, name), Receiver(a, name), 2, peer="a")
    assert Receiver(a, name).state().role is Role.REPLICA and ack.point != acked.point
    assert sha(a.volume_path(name)) == sha(b.volume_path(name))


def test_a_record_naming_another_primary_at_the_same_epoch_fences_too(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    a = pair.a.pool
    state = roles.fence(a, name, 1)
    assert (state.role, state.epoch) == (Role.STALE, 1)
    with pytest.raises(Fenced):
        roles.check_writable(a, name, 1)


def test_an_older_record_changes_nothing_and_a_replica_adopts_a_newer_epoch(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    a, b = pair.a.pool, pair.b.pool
    roles.promote(a, name, 3)
    with pytest.raises(FailedPrecondition):
        roles.fence(a, name, 2)
    assert roles.copy_state(a, name).role is Role.PRIMARY
    sync(Sender(a, name), Receiver(b, name), 3)
    assert (roles.fence(b, name, 4).role, roles.copy_state(b, name).epoch) == (Role.REPLICA, 4)
