"""Point ids, their order, and the names derived from volumes (replication.md §1, §8.2).

A point id is ``e<epoch>-<seq>``: only one primary exists per epoch and it persists
``seq`` before taking the point's snapshot, so one id names one set of bytes on every copy
that holds it. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from statehold.errors import InvalidArgument

U64_MAX = (1 << 64) - 1
SNAPSHOT_PREFIX = "rp-"
"""Reserved prefix of point snapshot names: users must not create snapshots starting with it."""
LABEL_PREFIX = "copy.statehold.io/"

_POINT = re.compile(r"e([1-9][0-9]{0,19})-([1-9][0-9]{0,19})")


def parse_point(point: str) -> tuple[int, int]:
    """``(epoch, seq)`` of a point id; InvalidArgument for anything else."""
    match = _POINT.fullmatch(point) if isinstance(point, str) else None
    if match is None:
        raise InvalidArgument(f"{point!r} is not a point id (e<epoch>-<seq>)")
    epoch, seq = int(match.group(1)), int(match.group(2))
    if epoch > U64_MAX or seq > U64_MAX:
        raise InvalidArgument(f"point id {point!r} is out of range")
    return epoch, seq


def make_point(epoch: int, seq: int) -> str:
    point = f"e{epoch}-{seq}"
    parse_point(point)
    return point


def newest(points: Iterable[str | None]) -> str | None:
    """The newest of ``points`` by (epoch, seq), ignoring None; None if there is none."""
    real = [p for p in points if p is not None]
    return max(real, key=parse_point) if real else None


def common_base(local_points: Iterable[str], remote_points: Iterable[str]) -> str | None:
    """The newest point both sides hold (the base of a resync by diff), or None (seed)."""
    return newest(set(local_points) & set(remote_points))


def volume_hash(name: str) -> str:
    """16 hex digits of SHA-256 of ``name`` (UTF-8): a short, fixed-length stand-in."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def snapshot_name(volume: str, point: str) -> str:
    """The engine snapshot holding ``point`` of ``volume``: ``rp-<hash16>-<point>`` (≤ 62)."""
    parse_point(point)
    return f"{SNAPSHOT_PREFIX}{volume_hash(volume)}-{point}"


def node_label(volume_id: str) -> str:
    """The node label key that admits copy holders of ``volume_id`` (value ``"true"``)."""
    return LABEL_PREFIX + volume_hash(volume_id)
