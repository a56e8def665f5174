"""Seeds, incrementals, cut streams and resumed seeds between two real pools."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from statehold.engine.types import MiB
from statehold.errors import Corrupt, StateholdError, Unavailable
from statehold.replication import Extent, Receiver, Role, Sender, decode, encode
from statehold.replication.wire import MAX_PAYLOAD, Frame, StreamEnd
from tests.integration.replication.helpers import (
    Pair,
    make_copies,
    point_snapshots,
    scribble,
    sha,
    sync,
    until,
    wire,
)

pytestmark = pytest.mark.root


def test_seed_then_incrementals_match_by_checksum(pair: Pair) -> None:
    name = make_copies(pair)
    a, b = pair.a.pool, pair.b.pool
    sender, receiver = Sender(a, name), Receiver(b, name)
    rng = random.Random(1)
    scribble(a.volume_path(name), rng, 200)
    ack = sync(sender, receiver, 1)
    assert sha(b.volume_path(name)) == sha(a.volume_path(name))
    assert receiver.state().point == ack.point and receiver.state().role is Role.REPLICA
    for round_ in range(4):
        changed = scribble(a.volume_path(name), rng, 30)
        if round_ == 2:  # the primary grows between two points: the replica follows
            a.expand(name, 192 * MiB)
        ack = sync(sender, receiver, 1)
        assert sha(b.volume_path(name)) == sha(a.volume_path(name))
        # FIEMAP over-reports by at most whole extents; an incremental never resends it all
        assert ack.bytes <= changed + 64 * MiB // 16
    assert b.get_volume(name).size == 192 * MiB
    # the sender keeps only the acknowledged point; the replica its two newest
    assert point_snapshots(a, name) == {f"rp-{_h(name)}-{ack.point}"}
    assert len(point_snapshots(b, name)) == 2
    assert set(receiver.state().points) == {p.split("-", 2)[2] for p in point_snapshots(b, name)}


def _h(name: str) -> str:
    from statehold.replication.points import volume_hash

    return volume_hash(name)


def test_a_stream_cut_at_every_frame_keeps_the_previous_point(pair: Pair) -> None:
    name = make_copies(pair, 64 * MiB)
    a, b = pair.a.pool, pair.b.pool
    sender, receiver = Sender(a, name), Receiver(b, name)
    rng = random.Random(2)
    scribble(a.volume_path(name), rng, 40)
    before = sync(sender, receiver, 1)
    good = sha(b.volume_path(name))
    scribble(a.volume_path(name), rng, 12, max_len=3 * MAX_PAYLOAD)
    plan = sender.plan(receiver.state(), peer="b")
    frames = list(sender.open(epoch=1, base=plan.base, peer="b"))
    assert len(frames) > 4
    for cut in range(len(frames)):
        with pytest.raises(Unavailable):
            receiver.apply(wire(iter(frames[:cut])))
        assert sha(b.volume_path(name)) == good
        assert receiver.state().point == before.point
    # a frame truncated in the middle of its extent: the transport's decode refuses it
    mid = next(i for i, f in enumerate(frames) if isinstance(f, Extent))
    with pytest.raises(Corrupt):
        receiver.apply(_cut_inside(frames, mid))
    # an extent altered in flight (its checksum no longer matches)
    ext = frames[mid]
    assert isinstance(ext, Extent)
    altered = Extent(ext.offset, ext.data[:-1] + bytes([ext.data[-1] ^ 1]), ext.checksum)
    with pytest.raises(Corrupt):
        receiver.apply(iter([*frames[:mid], altered, *frames[mid + 1:]]))
    # an end frame that lies about the count
    end = frames[-1]
    assert isinstance(end, StreamEnd)
    with pytest.raises(Corrupt):
        receiver.apply(iter([*frames[:-1], StreamEnd(end.extents + 1, end.bytes, end.digest)]))
    assert sha(b.volume_path(name)) == good
    assert not receiver.store.work_path(name).exists()
    # the next attempt succeeds, and brings the replica to the point
    ack = receiver.apply(wire(iter(frames)))
    sender.acknowledged(ack.point, peer="b")
    assert sha(b.volume_path(name)) == sha(a.snapshot_path(f"rp-{_h(name)}-{ack.point}"))


def _cut_inside(frames: list[Frame], index: int) -> Iterator[Frame]:
    yield from frames[:index]
    raw = encode(frames[index])
    yield decode(raw[: len(raw) // 2])


def test_an_interrupted_seed_resumes_from_its_persisted_offset(pair: Pair) -> None:
    name = make_copies(pair, 64 * MiB)
    a, b = pair.a.pool, pair.b.pool
    path = a.volume_path(name)
    with open(path, "r+b") as fh:  # dense: every byte is data
        fh.write(random.Random(3).randbytes(64 * MiB))
    sender, receiver = Sender(a, name), Receiver(b, name, checkpoint=4 * MiB)
    plan = sender.plan(receiver.state(), peer="b")
    assert plan.base is None and plan.resume_from == 0
    with pytest.raises(Unavailable):
        receiver.apply(until(sender.open(epoch=1, base=None, peer="b"), 40 * MiB))
    seed = receiver.state().seed
    assert seed is not None and 32 * MiB <= seed.offset <= 40 * MiB
    plan = sender.plan(receiver.state(), peer="b")
    assert plan.resume_from == seed.offset and plan.point == seed.point
    ack = receiver.apply(wire(sender.open(epoch=1, base=None, resume_from=plan.resume_from,
                                          point=plan.point, peer="b")))
    sender.acknowledged(ack.point, peer="b")
    assert ack.point == seed.point
    assert ack.bytes == 64 * MiB - seed.offset  # only what was not yet durable travelled
    assert sha(b.volume_path(name)) == sha(path)
    assert receiver.state().seed is None


def test_a_resume_without_a_matching_seed_is_refused(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    sender, receiver = Sender(pair.a.pool, name), Receiver(pair.b.pool, name)
    scribble(pair.a.pool.volume_path(name), random.Random(4), 20)
    sync(sender, receiver, 1)
    with pytest.raises(StateholdError):
        receiver.apply(sender.open(epoch=1, base=None, resume_from=MAX_PAYLOAD, peer="x"))
    assert receiver.state().role is Role.REPLICA


def test_a_lost_ack_is_recovered_by_plan_not_by_reapplying(pair: Pair) -> None:
    name = make_copies(pair, 16 * MiB)
    sender, receiver = Sender(pair.a.pool, name), Receiver(pair.b.pool, name)
    rng = random.Random(5)
    scribble(pair.a.pool.volume_path(name), rng, 20)
    sync(sender, receiver, 1)
    scribble(pair.a.pool.volume_path(name), rng, 20)
    plan = sender.plan(receiver.state(), peer="b")
    ack = receiver.apply(sender.open(epoch=1, base=plan.base, peer="b"))  # the ack is lost
    plan = sender.plan(receiver.state(), peer="b")
    assert plan.base == ack.point
    assert sender.state().peers["b"].acked == ack.point
    assert os.path.exists(pair.a.pool.snapshot_path(f"rp-{_h(name)}-{ack.point}"))
