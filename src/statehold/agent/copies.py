"""What the agent asks of the replication core, for the copies of volumes on this node.

The agent is a transport: it never looks inside a replication frame. :class:`Copies` is
its one port to ``statehold.replication`` (the Sender, Receiver and roles over this node's
pools); ``statehold.agent.engine_copies`` implements it, tests use an in-memory one.
Frames cross the port *encoded* (``bytes``): decoding happens in the worker thread that
applies them, encoding in the iterator gRPC pulls from.

Contract of every implementation:

* ``apply`` consumes the frames of one stream and returns only after the new point is
  durable (fsynced) and acknowledged; if the iterator raises (a cut stream) or ends before
  the stream's end frame, the copy's previous point stays its acknowledged one (the error
  propagates). A full copy persists its progress so ``state().resume_offset`` lets the
  next stream resume. Not idempotent, but safe to retry: a repeated stream re-applies.
* ``stream`` plans the next stream to ``peer`` from its copy's state (``remote``, what the
  peer's ``CopyStatus`` said: a diff from the newest common point, the resume of an
  interrupted seed, or a new seed; a lost acknowledgement is accepted on the way), then
  yields its frames to a new point, or to ``point`` (one this cycle already took for
  another replica), or to the resumed seed's point; lazily, so a slow peer backpressures
  the reads.
* ``promote``/``demote`` refuse (FailedPrecondition) an epoch older than the copy's.
* ``locate`` finds the copy of a volume name in whichever pool of this node holds it
  (copies of one volume share the engine name; pools are named per node).
* ``in_use``: the engine volume is attached or mounted here (a workload may write to it).
* ``release`` deletes the copy (point snapshots, replication state, engine volume); a copy
  already gone is a success; FailedPrecondition while it is in use or still primary.
* Errors are :mod:`statehold.errors`: NotFound (no such pool or volume), FailedPrecondition
  (fenced epoch, wrong role), Corrupt (a checksum failed), Aborted (cut stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from statehold.errors import InvalidArgument

ROLES = ("primary", "replica", "seeding", "stale")


@dataclass(frozen=True, slots=True)
class VolumeRef:
    """A volume of this node, named ``<pool>/<volume>`` on the wire."""

    pool: str
    name: str

    @classmethod
    def parse(cls, text: str) -> VolumeRef:
        pool, sep, name = text.partition("/")
        if not sep or not pool or not name or "/" in name:
            raise InvalidArgument(f"volume {text!r} must be named <pool>/<volume>")
        return cls(pool, name)

    def __str__(self) -> str:
        return f"{self.pool}/{self.name}"


@dataclass(frozen=True, slots=True)
class CopyView:
    """The state of this node's copy of a volume, as the agent reports it."""

    role: str                 # one of ROLES
    epoch: int
    point: str                # acknowledged point ("" none)
    resume_offset: int = 0    # bytes of an interrupted seed already persisted
    state: str = ""           # the core's whole state, JSON (replication.md §5.2): what a
                              # primary plans its next stream from
    point_time: float = 0.0   # unix time this copy's point snapshot was made (0: none)


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """What a copy of a volume must be created as (the primary's engine volume)."""

    size: int
    mode: str                 # filesystem | block
    fs: str                   # "" for block


@dataclass(frozen=True, slots=True)
class Applied:
    """What a complete stream left on the replica."""

    point: str
    epoch: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One stream a primary is about to send: its frames and the point it leads to."""

    frames: Iterator[bytes]
    point: str                # the point the stream leads to
    taken_at: float           # unix time the stream's point was taken (the lag's origin)


class Copies(Protocol):
    def state(self, volume: VolumeRef) -> CopyView:
        """NotFound when this node has no such volume."""
        ...

    def spec(self, volume: VolumeRef) -> VolumeSpec: ...

    def create(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView: ...

    def apply(self, volume: VolumeRef, frames: Iterable[bytes]) -> Applied: ...

    wire_versions: tuple[int, ...]
    """Replication wire versions this side speaks."""

    def stream(self, volume: VolumeRef, *, epoch: int, remote: CopyView, peer: str,
               point: str | None = None) -> Outgoing: ...

    def acknowledged(self, volume: VolumeRef, point: str, *, peer: str) -> None: ...

    def promote(self, volume: VolumeRef, epoch: int) -> CopyView: ...

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView: ...

    def locate(self, volume: VolumeRef) -> VolumeRef:
        """NotFound when no pool of this node holds the name."""
        ...

    def in_use(self, volume: VolumeRef) -> bool: ...

    def release(self, volume: VolumeRef, *, whole: bool = False) -> None: ...
