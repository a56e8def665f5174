"""The agent's :class:`~statehold.agent.copies.Copies` over this node's pools and the
replication core (``statehold.replication``): Sender, Receiver and roles, one engine
:class:`~statehold.engine.node.Node` for the process.

Translation only: encoded frames are decoded here (in the worker thread that applies
them) and encoded here (in the iterator gRPC pulls from); a peer's state arrives as the
core's own JSON (replication.md §5.2) and is parsed back into a ``CopyState`` for
``Sender.plan``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from itertools import chain

from statehold.agent.copies import Applied, CopyView, Outgoing, VolumeRef, VolumeSpec
from statehold.engine import readonly
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, VolumeMode
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument, NotFound
from statehold.replication import Receiver, Sender, StreamHeader, decode, encode, roles
from statehold.replication.points import parse_point, snapshot_name
from statehold.replication.state import CopyState, Role, StateStore
from statehold.replication.wire import VERSION

log = logging.getLogger("statehold.agent")


def view_of(state: CopyState) -> CopyView:
    seed = state.seed.offset if state.seed is not None else 0
    return CopyView(role=state.role.value, epoch=state.epoch, point=state.point or "",
                    resume_offset=seed, state=json.dumps(state.to_json(), sort_keys=True))


def state_of(view: CopyView, volume: str) -> CopyState:
    """The peer's CopyState from its view (a peer without state: a new, seeding copy)."""
    if not view.state:
        return CopyState(volume)
    try:
        raw = json.loads(view.state)
    except ValueError as exc:
        raise Corrupt(f"peer state of {volume!r} is not JSON: {exc}") from exc
    return CopyState.from_json(raw)


class EngineCopies:
    wire_versions: tuple[int, ...] = (VERSION,)

    def __init__(self, node: Node, *, checkpoint: int | None = None) -> None:
        self.node = node
        self.checkpoint = checkpoint

    def _pool(self, volume: VolumeRef) -> Pool:
        self.node.refresh()  # pools created or imported by a CLI beside the agent
        return self.node.pool(volume.pool)

    def state(self, volume: VolumeRef) -> CopyView:
        pool = self._pool(volume)
        pool.get_volume(volume.name)  # NotFound: no copy on this node
        view = view_of(self._receiver(pool, volume).state())
        if not view.point:
            return view
        try:
            made = pool.get_snapshot(snapshot_name(volume.name, view.point)).created_at
        except NotFound:  # a listed point whose snapshot a crash took away: no time known
            return view
        return dataclasses.replace(view, point_time=made)

    def locate(self, volume: VolumeRef) -> VolumeRef:
        """The named pool if it holds the volume; else the one pool holding that name with
        replication state (or, lacking state anywhere, the one pool holding it)."""
        self.node.refresh()
        holders, tracked = [], []
        for pool in self.node.pools():
            try:
                pool.get_volume(volume.name)
            except NotFound:
                continue
            if pool.name == volume.pool:
                return volume
            holders.append(pool.name)
            if StateStore(pool.meta_dir).exists(volume.name):
                tracked.append(pool.name)
        found = tracked or holders
        if not found:
            raise NotFound(f"no pool of this node holds volume {volume.name!r}")
        if len(found) > 1:
            raise FailedPrecondition(f"pools {', '.join(sorted(found))} of this node all hold a "
                                     f"volume {volume.name!r}; name the pool")
        return VolumeRef(found[0], volume.name)

    def in_use(self, volume: VolumeRef) -> bool:
        vol = self._pool(volume).get_volume(volume.name)
        return vol.device is not None or bool(vol.mounts)

    def release(self, volume: VolumeRef, *, whole: bool = False) -> None:
        """Point snapshots, work file and state first (the core's release), then the engine
        volume: a crash in between leaves a volume without state, which a retry deletes.
        ``whole``: the volume itself is deleted (its PV reclaimed, controller/reclaim.py),
        so a primary goes too, exactly as CSI DeleteVolume deletes it on its node."""
        pool = self._pool(volume)
        try:
            vol = pool.get_volume(volume.name)
        except NotFound:
            vol = None
        if vol is not None:
            if vol.device is not None or vol.mounts:
                raise FailedPrecondition(f"the copy {volume} is in use on this node (attached or "
                                         "mounted); it is not released")
            if not whole and roles.copy_state(pool, volume.name).role is Role.PRIMARY:
                raise FailedPrecondition(f"the copy {volume} is the primary; demote it before "
                                         "releasing it")
        roles.release(pool, volume.name)
        if vol is not None:
            pool.delete_volume(volume.name)
        log.info("copy released volume=%s whole=%s", volume, whole)

    def spec(self, volume: VolumeRef) -> VolumeSpec:
        v = self._pool(volume).get_volume(volume.name)
        return VolumeSpec(v.size, v.mode.value, v.fs.value if v.fs else "")

    def create(self, volume: VolumeRef, spec: VolumeSpec) -> CopyView:
        pool = self._pool(volume)
        try:
            mode = VolumeMode(spec.mode)
            fs = FsType(spec.fs) if spec.fs else None
        except ValueError as exc:
            raise InvalidArgument(f"copy spec {spec}: {exc}") from exc
        pool.create_volume(volume.name, spec.size, mode=mode, fs=fs)
        return view_of(self._receiver(pool, volume).state())

    def _receiver(self, pool: Pool, volume: VolumeRef) -> Receiver:
        if self.checkpoint is None:
            return Receiver(pool, volume.name)
        return Receiver(pool, volume.name, checkpoint=self.checkpoint)

    def apply(self, volume: VolumeRef, frames: Iterable[bytes]) -> Applied:
        receiver = self._receiver(self._pool(volume), volume)
        ack = receiver.apply(decode(data) for data in frames)
        return Applied(point=ack.point, epoch=ack.epoch, bytes=ack.bytes)

    def stream(self, volume: VolumeRef, *, epoch: int, remote: CopyView, peer: str,
               point: str | None = None) -> Outgoing:
        pool = self._pool(volume)
        sender = Sender(pool, volume.name)
        plan = sender.plan(state_of(remote, volume.name), peer=peer)
        target = plan.point or point  # a resumed seed keeps its own point
        if target is not None and plan.base is not None and parse_point(plan.base) >= parse_point(target):
            target = None  # the peer is past the cycle's point already: a point of its own
        frames = sender.open(epoch=epoch, base=plan.base, resume_from=plan.resume_from,
                             point=target, peer=peer)
        header = next(frames)
        if not isinstance(header, StreamHeader):  # pragma: no cover - the core opens with one
            raise Corrupt("a stream that does not open with its header")
        taken_at = pool.get_snapshot(snapshot_name(volume.name, header.point)).created_at

        def encoded() -> Iterator[bytes]:
            try:
                for frame in chain((header,), frames):
                    yield encode(frame)
            finally:
                close = getattr(frames, "close", None)  # a generator: its snapshot's descriptor
                if close is not None:                   # is released now, not at collection
                    close()

        return Outgoing(encoded(), header.point, taken_at)

    def acknowledged(self, volume: VolumeRef, point: str, *, peer: str) -> None:
        Sender(self._pool(volume), volume.name).acknowledged(point, peer=peer)

    def promote(self, volume: VolumeRef, epoch: int) -> CopyView:
        return view_of(roles.promote(self._pool(volume), volume.name, epoch))

    def demote(self, volume: VolumeRef, epoch: int) -> CopyView:
        return view_of(roles.demote(self._pool(volume), volume.name, epoch))

    # -- the agent's own fencing (agent/fencing.py) --------------------------------------------
    def local_copies(self) -> list[VolumeRef]:
        """Every volume of this node's pools that has replication state."""
        self.node.refresh()
        out = []
        for pool in self.node.pools():
            for name in StateStore(pool.meta_dir).volumes():
                try:
                    pool.get_volume(name)
                except NotFound:  # a release that crashed between state and volume
                    continue
                out.append(VolumeRef(pool.name, name))
        return out

    def fence(self, volume: VolumeRef, epoch: int) -> CopyView:
        return view_of(roles.fence(self._pool(volume), volume.name, epoch))

    def seal(self, volume: VolumeRef) -> bool:
        """Make the copy read-only where it is attached or mounted (engine/readonly.py)."""
        return readonly.seal(self._pool(volume).get_volume(volume.name).device).complete
