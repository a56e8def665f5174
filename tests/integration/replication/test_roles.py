"""Epoch fencing, failover with the old primary returning, a planned move of a mounted
filesystem, release."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine.types import FsType, MiB
from statehold.errors import FailedPrecondition, Fenced, Unavailable
from statehold.replication import Receiver, Role, Sender, StreamHeader, roles
from statehold.replication.points import snapshot_name
from statehold.replication.wire import Frame
from tests.integration.replication.helpers import (
    Pair,
    make_copies,
    point_snapshots,
    scribble,
    sha,
    sync,
    volume_name,
    wire,
)

pytestmark = pytest.mark.root


def test_failover_fences_the_old_primary_and_resyncs_it_from_the_common_point(pair: Pair) -> None:
    name = make_copies(pair, 64 * MiB)
    a, b = pair.a.pool, pair.b.pool
    rng = random.Random(10)
    scribble(a.volume_path(name), rng, 40)
    acked = sync(Sender(a, name), Receiver(b, name), 1)
    # the primary keeps writing and takes a point the replica never gets: then its node dies
    scribble(a.volume_path(name), rng, 40)
    unacked = Sender(a, name).open(epoch=1, base=acked.point, peer="b")
    next(unacked)
    unacked.close()
    assert roles.check_writable(a, name, 1).role is Role.PRIMARY

    # failover: the cluster records epoch 2 first, then the newest replica is promoted
    promoted = roles.promote(b, name, 2)
    assert promoted.role is Role.PRIMARY and promoted.fork == acked.point
    assert roles.check_writable(b, name, 2).epoch == 2
    with pytest.raises(Fenced):  # the old primary's stream is refused by the new primary
        Receiver(b, name).apply(Sender(a, name).open(epoch=1, base=None, peer="b"))
    scribble(b.volume_path(name), rng, 40)  # the new primary serves writes

    # the old primary returns: it sees epoch 2 at its stage attempt and is fenced for good
    with pytest.raises(Fenced):
        roles.check_writable(a, name, 2)
    old = Receiver(a, name).state()
    assert old.role is Role.STALE and old.epoch == 2
    with pytest.raises(Fenced):
        roles.check_writable(a, name, 2)
    with pytest.raises(Fenced):
        Sender(a, name).open(epoch=1, base=None)
    with pytest.raises(Fenced):  # a stream of the old epoch is refused by the stale copy too
        Receiver(a, name).apply(iter([_header(name, epoch=1)]))

    # resync by diff from the newest common point, discarding the unacknowledged writes
    sender = Sender(b, name)
    plan = sender.plan(old, peer="a")
    assert plan.base == acked.point
    ack = Receiver(a, name).apply(wire(sender.open(epoch=2, base=plan.base, peer="a")))
    sender.acknowledged(ack.point, peer="a")
    assert ack.bytes < 16 * MiB
    assert sha(a.volume_path(name)) == sha(b.snapshot_path(snapshot_name(name, ack.point)))
    state = Receiver(a, name).state()
    assert state.role is Role.REPLICA and state.point == ack.point and state.epoch == 2
    # the stale copy's own points are gone once it follows the new primary
    assert all(p.startswith("e2-") or p == acked.point for p in state.points)
    sender.release_fork()
    assert acked.point not in Sender(b, name).points()


def _header(name: str, *, epoch: int) -> StreamHeader:
    return StreamHeader(volume=name, epoch=epoch, base=None, point=f"e{epoch}-99", size=MiB)


def test_promote_demote_and_check_writable_rules(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    a, b = pair.a.pool, pair.b.pool
    assert roles.promote(a, name, 1).epoch == 1  # the same epoch again: idempotent
    with pytest.raises(FailedPrecondition):  # a replica is not staged before promotion
        roles.check_writable(b, name, 1)
    # a seed that started makes a seeding copy, which cannot be promoted
    receiver = Receiver(b, name, checkpoint=MiB)
    scribble(a.volume_path(name), random.Random(11), 30)
    with pytest.raises(Unavailable):
        receiver.apply(_first(Sender(a, name).open(epoch=1, base=None, peer="b"), 3))
    assert receiver.state().role is Role.SEEDING
    with pytest.raises(FailedPrecondition):
        roles.promote(b, name, 2)
    # a local epoch newer than the cluster's record: the record was rolled back, refuse
    roles.promote(a, name, 3)
    with pytest.raises(FailedPrecondition):
        roles.check_writable(a, name, 2)
    with pytest.raises(Fenced):
        roles.promote(a, name, 2)
    with pytest.raises(Fenced):
        roles.demote(a, name, 3)
    assert roles.demote(a, name, 4).role is Role.STALE
    assert roles.demote(b, name, 4).role is Role.SEEDING  # other roles only adopt the epoch
    assert Receiver(b, name).state().epoch == 4


def _first(frames: Iterator[Frame], n: int) -> Iterator[Frame]:
    for i, frame in enumerate(frames):
        if i == n:
            return
        yield frame


def _files(mnt: Path, tag: str, rng: random.Random, count: int) -> dict[str, str]:
    out = {}
    for i in range(count):
        data = rng.randbytes(rng.randrange(1, 400_000))
        (mnt / f"{tag}-{i}.bin").write_bytes(data)
        out[f"{tag}-{i}.bin"] = hashlib.sha256(data).hexdigest()
    return out


def test_planned_move_of_a_mounted_filesystem_loses_nothing(pair: Pair, scratch: Path) -> None:
    name = volume_name()
    a, b = pair.a.pool, pair.b.pool
    a.create_volume(name, 512 * MiB, fs=FsType.XFS)
    b.create_volume(name, 512 * MiB, fs=FsType.XFS)
    roles.promote(a, name, 1)
    mnt_a, mnt_b = scratch / "a", scratch / "b"
    rng = random.Random(12)
    sender, receiver = Sender(a, name), Receiver(b, name)
    a.mount(name, mnt_a)
    try:
        files = _files(mnt_a, "one", rng, 20)
        sync(sender, receiver, 1)            # seed while the workload writes
        files |= _files(mnt_a, "two", rng, 20)
        sync(sender, receiver, 1)            # catch-up under writes (frozen point)
        files |= _files(mnt_a, "three", rng, 10)
    finally:
        a.unmount(name, mnt_a)
        a.detach(name)
    final = sync(sender, receiver, 1)        # the pod is gone: the final sync has every write
    roles.promote(b, name, 2)                # (the cluster records epoch 2 first)
    assert roles.demote(a, name, 2).role is Role.STALE
    b.mount(name, mnt_b)
    try:
        got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mnt_b.glob("*.bin")}
        assert got == files
        (mnt_b / "after-move.bin").write_bytes(b"new primary")
    finally:
        b.unmount(name, mnt_b)
        b.detach(name)
    # the old primary follows the new one by an (almost) empty diff from the final point
    back = Sender(b, name)
    plan = back.plan(Receiver(a, name).state(), peer="a")
    assert plan.base == final.point
    ack = Receiver(a, name).apply(wire(back.open(epoch=2, base=plan.base, peer="a")))
    assert ack.bytes < 8 * MiB
    assert sha(a.volume_path(name)) == sha(b.snapshot_path(snapshot_name(name, ack.point)))


def test_release_removes_points_and_state_but_not_user_snapshots(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    a, b = pair.a.pool, pair.b.pool
    scribble(a.volume_path(name), random.Random(13), 10)
    a.create_snapshot(name, f"user-{name}")
    sync(Sender(a, name), Receiver(b, name), 1)
    b.create_snapshot(name, f"user-{name}")
    for pool in (a, b):
        assert point_snapshots(pool, name)
        roles.release(pool, name)
        assert not point_snapshots(pool, name)
        assert pool.get_snapshot(f"user-{name}").source_volume == name
        assert Receiver(pool, name).state().epoch == 0
