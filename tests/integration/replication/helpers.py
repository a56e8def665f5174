"""Helpers of the replication integration tests: two pools standing for two nodes, one
replication cycle as the agent runs it, random writes, checksums."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import MiB, VolumeMode
from statehold.replication import Ack, Extent, Receiver, Sender, decode, encode, roles
from statehold.replication.points import SNAPSHOT_PREFIX
from statehold.replication.wire import Frame

_names = itertools.count()


@dataclass
class Site:
    """One "node": its home, Node and pool."""

    home: Path
    node: Node
    pool: Pool


@dataclass
class Pair:
    a: Site
    b: Site


def volume_name() -> str:
    return f"rv{os.getpid() % 10000}-{next(_names)}"


def make_copies(pair: Pair, size: int = 128 * MiB) -> str:
    """A block volume on both pools; the one on ``a`` is the primary at epoch 1."""
    name = volume_name()
    pair.a.pool.create_volume(name, size, mode=VolumeMode.BLOCK, fs=None)
    pair.b.pool.create_volume(name, size, mode=VolumeMode.BLOCK, fs=None)
    roles.promote(pair.a.pool, name, 1)
    return name


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def scribble(path: Path, rng: random.Random, writes: int, *, max_len: int = 256 * 1024) -> int:
    """Random writes (4 KiB aligned, some of zeros) into a volume's backing file."""
    size = path.stat().st_size
    written = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(writes):
            length = rng.randrange(4096, max_len + 1, 4096)
            offset = rng.randrange(0, size - length + 1, 4096)
            data = bytes(length) if rng.random() < 0.1 else rng.randbytes(length)
            written += os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def wire(frames: Iterator[Frame]) -> Iterator[Frame]:
    """What a transport does: every frame encoded, carried as one message, decoded."""
    for frame in frames:
        yield decode(encode(frame))


def until(frames: Iterable[Frame], limit: int) -> Iterator[Frame]:
    """The frames of a stream until ``limit`` data bytes went by: then the link drops."""
    sent = 0
    for frame in frames:
        if isinstance(frame, Extent):
            sent += frame.length
            if sent > limit:
                return
        yield frame


def sync(sender: Sender, receiver: Receiver, epoch: int, peer: str = "b") -> Ack:
    """One replication cycle as the agent runs it: plan, open, apply, acknowledge."""
    plan = sender.plan(receiver.state(), peer=peer)
    frames = sender.open(epoch=epoch, base=plan.base, resume_from=plan.resume_from,
                         point=plan.point, peer=peer)
    ack = receiver.apply(wire(frames))
    sender.acknowledged(ack.point, peer=peer)
    return ack


def point_snapshots(pool: Pool, volume: str) -> set[str]:
    return {s.name for s in pool.list_snapshots(volume) if s.name.startswith(SNAPSHOT_PREFIX)}
