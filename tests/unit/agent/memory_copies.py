"""An in-memory :class:`~statehold.agent.copies.Copies` with opaque frames, to test the
agent's transport without the replication core.

Frames: ``H<epoch>:<point>`` (header), ``D<bytes>`` (data to append), ``E`` (end). A stream
is always a full copy from ``resume_from``; ``apply`` commits only at ``E``, so a cut
stream keeps the previous point, and it persists the staged length (``resume_offset``)
as a seeding replica does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from statehold.agent.copies import Applied, CopyView, Outgoing, VolumeRef, VolumeSpec
from statehold.errors import Corrupt, FailedPrecondition, NotFound, Unavailable


@dataclass
class Copy:
    role: str = "replica"
    epoch: int = 0
    data: bytes = b""           # acknowledged content
    point: str = ""
    staged: bytearray = field(default_factory=bytearray)   # an interrupted seed's bytes
    applied_frames: int = 0


class MemoryCopies:
    def __init__(self, chunk: int = 64 * 1024) -> None:
        self.chunk = chunk
        self.copies: dict[VolumeRef, Copy] = {}
        self.acked: list[tuple[VolumeRef, str]] = []
        self.gate = threading.Event()       # apply waits for it before each frame
        self.gate.set()
        self.applying = threading.Event()   # set when apply has started
        self._points = 0
        self._lock = threading.Lock()
        self.in_use_volumes: set[VolumeRef] = set()

    def add(self, volume: str, role: str, data: bytes = b"", epoch: int = 1) -> VolumeRef:
        ref = VolumeRef.parse(volume)
        self.copies[ref] = Copy(role=role, epoch=epoch, data=data)
        return ref

    def spec(self, volume: VolumeRef) -> VolumeSpec:
        return VolumeSpec(len(self._copy(volume).data) or 1, "block", "")

    def create(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView:
        self.copies.setdefault(volume, Copy(role="seeding"))
        return self.state(volume)

    def _copy(self, volume: VolumeRef) -> Copy:
        try:
            return self.copies[volume]
        except KeyError:
            raise NotFound(f"no volume {volume}") from None

    def state(self, volume: VolumeRef) -> CopyView:
        c = self._copy(volume)
        return CopyView(c.role, c.epoch, c.point, len(c.staged))

    wire_versions: tuple[int, ...] = (1,)

    def stream(self, volume: VolumeRef, *, epoch: int, remote: CopyView, peer: str,
               point: str | None = None) -> Outgoing:
        c = self._copy(volume)
        resume_from = remote.resume_offset
        if point is None:
            with self._lock:
                self._points += 1
                point = f"p{self._points}"
        data = c.data

        def frames() -> Iterator[bytes]:
            yield f"H{epoch}:{point}".encode()
            for off in range(resume_from, len(data), self.chunk):
                yield b"D" + data[off:off + self.chunk]
            yield b"E"

        return Outgoing(frames(), point, time.time())

    def apply(self, volume: VolumeRef, frames: Iterable[bytes]) -> Applied:
        c = self._copy(volume)
        self.applying.set()
        header: tuple[int, str] | None = None
        total = 0
        for data in frames:
            assert self.gate.wait(60)
            kind, body = data[:1], data[1:]
            if kind == b"H":
                epoch, _, point = body.decode().partition(":")
                if int(epoch) < c.epoch:
                    raise FailedPrecondition(f"epoch {epoch} is older than {c.epoch}")
                header = (int(epoch), point)
            elif kind == b"D":
                c.staged += body
                total += len(body)
                c.applied_frames += 1
            elif kind == b"E":
                if header is None:
                    raise Corrupt("end before header")
                c.data, c.staged = bytes(c.staged), bytearray()
                c.epoch, c.point = header
                return Applied(c.point, c.epoch, total)
        raise Unavailable("stream ended before its end frame")

    def acknowledged(self, volume: VolumeRef, point: str, *, peer: str) -> None:
        self.acked.append((volume, point))

    def promote(self, volume: VolumeRef, epoch: int) -> CopyView:
        c = self._copy(volume)
        if epoch <= c.epoch:
            raise FailedPrecondition(f"epoch {epoch} is not newer than {c.epoch}")
        c.role, c.epoch = "primary", epoch
        return self.state(volume)

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView:
        c = self._copy(volume)
        if epoch < c.epoch:
            raise FailedPrecondition(f"epoch {epoch} is older than {c.epoch}")
        c.role, c.epoch = "replica", epoch
        return self.state(volume)

    # the copy's place and life (the controller's calls through the agent)
    def locate(self, volume: VolumeRef) -> VolumeRef:
        if volume in self.copies:
            return volume
        found = [v for v in self.copies if v.name == volume.name]
        if not found:
            raise NotFound(f"no copy of {volume.name} on this node")
        if len(found) > 1:
            raise FailedPrecondition(f"several pools hold {volume.name}")
        return found[0]

    def in_use(self, volume: VolumeRef) -> bool:
        self._copy(volume)
        return volume in self.in_use_volumes

    def release(self, volume: VolumeRef, *, whole: bool = False) -> None:
        c = self.copies.get(volume)
        if c is None:
            return
        if volume in self.in_use_volumes or (c.role == "primary" and not whole):
            raise FailedPrecondition(f"{volume} is in use or primary")
        del self.copies[volume]
