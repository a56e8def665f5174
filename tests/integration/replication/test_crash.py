"""SIGKILL of a receiver or a sender at every replication step, then convergence.

A child process runs one side with a fault hook that kills it at one step; the test then
reads the copy's state (which finishes or discards what the child left), checks the bytes
by checksum against the previous or the new point, sends again where needed and checks
that both sides converge with nothing left behind: no work file, no point snapshot the
state does not list, and nothing for the engine's own recovery to do.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from statehold.engine.node import Node
from statehold.engine.types import MiB
from statehold.replication import Receiver, Role, Sender, encode
from statehold.replication.points import snapshot_name
from statehold.replication.wire import StreamHeader, read_frames
from tests.integration.replication.helpers import (
    Pair,
    Site,
    make_copies,
    point_snapshots,
    scribble,
    sha,
    sync,
)

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("crash_child.py")
RECEIVE_STEPS = ("replication.apply.synced", "replication.commit.intent",
                 "replication.commit.renamed", "replication.commit.snapshot",
                 "replication.commit.done")
ROLLED_BACK = {"replication.apply.synced"}


def _kill_at(site: Site, volume: str, step: str, side: str, arg: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(site.home), site.pool.name, volume, step, side, arg],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, (
        f"step {step} was never reached (rc={proc.returncode}): {proc.stderr[-2000:]}")


def _tidy(site: Site, volume: str) -> None:
    state = Receiver(site.pool, volume).state()
    assert not Receiver(site.pool, volume).store.work_path(volume).exists()
    assert point_snapshots(site.pool, volume) == {snapshot_name(volume, p) for p in state.points}
    node = Node(site.home)  # the engine's own recovery finds nothing to mend
    try:
        assert node.recovered.get(site.pool.name, []) == []
    finally:
        node.close()


@pytest.mark.parametrize("step", RECEIVE_STEPS)
def test_a_receiver_killed_at_any_step_converges(pair: Pair, scratch: Path, step: str) -> None:
    name = make_copies(pair, 32 * MiB)
    a, b = pair.a.pool, pair.b.pool
    sender = Sender(a, name)
    rng = random.Random(step)
    scribble(a.volume_path(name), rng, 30)
    before = sync(sender, Receiver(b, name), 1)
    old = sha(b.volume_path(name))
    scribble(a.volume_path(name), rng, 30)
    frames = list(sender.open(epoch=1, base=before.point, peer="b"))
    header = frames[0]
    assert isinstance(header, StreamHeader)
    stream = scratch / "frames.bin"
    stream.write_bytes(b"".join(encode(f) for f in frames))
    new = sha(a.snapshot_path(snapshot_name(name, header.point)))

    _kill_at(pair.b, name, step, "receive", str(stream))

    state = Receiver(b, name).state()  # finishes a recorded commit
    if step in ROLLED_BACK:
        assert state.point == before.point and sha(b.volume_path(name)) == old
        with open(stream, "rb") as fh:
            Receiver(b, name).apply(read_frames(fh))
        state = Receiver(b, name).state()
    assert state.point == header.point and state.role is Role.REPLICA
    assert state.committing is None
    assert sha(b.volume_path(name)) == new
    sync(sender, Receiver(b, name), 1)  # the sender learns of the ack and carries on
    assert sender.state().peers["b"].acked is not None
    _tidy(pair.b, name)
    _tidy(pair.a, name)


def test_a_receiver_killed_during_a_seed_resumes_after_its_checkpoint(pair: Pair,
                                                                       scratch: Path) -> None:
    name = make_copies(pair, 32 * MiB)
    a, b = pair.a.pool, pair.b.pool
    with open(a.volume_path(name), "r+b") as fh:
        fh.write(random.Random(20).randbytes(16 * MiB))
    sender = Sender(a, name)
    stream = scratch / "seed.bin"
    stream.write_bytes(b"".join(encode(f) for f in sender.open(epoch=1, base=None, peer="b")))

    _kill_at(pair.b, name, "replication.seed.checkpoint", "receive", str(stream))

    seed = Receiver(b, name).state().seed
    assert seed is not None and seed.offset >= MiB
    ack = sync(sender, Receiver(b, name), 1)
    assert ack.bytes == 16 * MiB - seed.offset
    assert sha(b.volume_path(name)) == sha(a.volume_path(name))
    _tidy(pair.b, name)


@pytest.mark.parametrize("step", ["replication.point.listed", "replication.point.taken"])
def test_a_sender_killed_while_taking_a_point_converges(pair: Pair, step: str) -> None:
    name = make_copies(pair, 32 * MiB)
    a, b = pair.a.pool, pair.b.pool
    rng = random.Random(step)
    scribble(a.volume_path(name), rng, 30)
    before = sync(Sender(a, name), Receiver(b, name), 1)
    scribble(a.volume_path(name), rng, 30)

    _kill_at(pair.a, name, step, "send", json.dumps({"epoch": 1, "base": before.point,
                                                     "peer": "b"}))

    ack = sync(Sender(a, name), Receiver(b, name), 1)
    assert ack.point != before.point
    assert sha(b.volume_path(name)) == sha(a.volume_path(name))
    _tidy(pair.a, name)
    # only the acknowledged point is left on the sender (a point cut short is gone)
    assert Sender(a, name).points() == [ack.point]
