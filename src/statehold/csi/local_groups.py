"""Group snapshots of local volumes: the CSI GroupController's requests -> ``Node.snapshot_group``.

Ids: a group snapshot is ``"<pool>/<group>"`` (the pool of its first member; every member
pool holds the record), its members are ordinary snapshots ``"<pool>/<member>"`` that the
Controller service reads, deletes and restores like any other. A member's engine name is
derived from the group's name and the volume id, so a retried CreateVolumeGroupSnapshot
names the same snapshots.

Every member must be on this node (in one pool or several): the engine freezes them from
here. A group with members elsewhere is FAILED_PRECONDITION (the spec's "cannot snapshot
multiple volumes together"); the two-phase freeze through the node agents is not built.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from statehold.csi import naming
from statehold.csi.backend import SHARED_PREFIX, SnapshotInfo
from statehold.engine import groups
from statehold.engine.node import Node
from statehold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

FREEZE_TIMEOUT_PARAMETER = "freezeTimeout"
"""VolumeGroupSnapshotClass parameter: how long the members may stay frozen (a duration:
``10s``, ``1m30s``; 1 s to 10 min; default 10 s). Past it the freeze keeper thaws and the
group fails (UNAVAILABLE; the sidecar retries)."""

_DURATION = re.compile(r"(?:([0-9]{1,4})m)?(?:([0-9]{1,4})s)?")


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_snapshot_id: str
    snapshots: tuple[SnapshotInfo, ...]     # the members' snapshots that exist
    member_ids: tuple[str, ...]             # every member's snapshot id, as recorded
    created_at: float
    ready: bool                             # whole: every member there and ready


def freeze_timeout(parameters: Mapping[str, str]) -> float:
    """Seconds of the ``freezeTimeout`` parameter (InvalidArgument unless 1 s to 10 min)."""
    text = parameters.get(FREEZE_TIMEOUT_PARAMETER, "").strip()
    if not text:
        return groups.DEFAULT_TIMEOUT
    match = _DURATION.fullmatch(text)
    seconds = int(match.group(1) or 0) * 60 + int(match.group(2) or 0) if match else 0
    if not 1 <= seconds <= groups.MAX_TIMEOUT:
        raise InvalidArgument(f"parameter {FREEZE_TIMEOUT_PARAMETER}={text!r} must be a "
                              f"duration from 1s to {groups.MAX_TIMEOUT / 60:g}m, like 10s or 1m30s")
    return float(seconds)


def member_name(group: str, volume_id: str) -> str:
    """The engine name of ``volume_id``'s snapshot in ``group``: readable, at most 63."""
    digest = hashlib.sha256(f"{group}\0{volume_id}".encode()).hexdigest()[:16]
    return f"{group[:46].rstrip('-')}-{digest}"


class LocalGroups:
    def __init__(self, node: Node, node_id: str) -> None:
        self.node = node
        self.node_id = node_id

    def _locate(self, volume_id: str) -> tuple[str, str] | None:
        """(pool, volume) on this node; None when its pool is not here (another node's);
        NotFound when the pool is here but the volume is not."""
        pool_name, name = naming.split_id(volume_id)
        try:
            pool = self.node.pool(pool_name)
        except (NotFound, Unavailable):
            return None
        try:
            pool.get_volume(name)
        except (NotFound, InvalidArgument) as exc:
            raise NotFound(f"volume {volume_id!r} does not exist") from exc
        return pool_name, name

    def create(self, name: str, volume_ids: Sequence[str],
               parameters: Mapping[str, str]) -> GroupInfo:
        timeout = freeze_timeout(parameters)
        shared = [v for v in volume_ids if v.startswith(SHARED_PREFIX)]
        if shared:
            raise FailedPrecondition(f"{shared[0]!r} is a shared volume: group snapshots take "
                                     "local volumes only")
        group = naming.engine_name(name)
        try:
            existing: groups.GroupSnapshot | None = self.node.get_snapshot_group(group)
        except NotFound:
            existing = None
        if existing is not None:
            asked = sorted(volume_ids)
            have = sorted(naming.join_id(m.pool, m.volume) for m in existing.members)
            if asked != have:
                raise AlreadyExists(f"group snapshot {name!r} exists with other volumes")
            if existing.complete:  # a retry: answered from the record, sources or not
                return self._info(existing)
        found = {v: self._locate(v) for v in volume_ids}
        away = [v for v, at in found.items() if at is None]
        if len(away) == len(volume_ids):
            raise NotFound(f"no volume of the group is on node {self.node_id!r} "
                           f"(e.g. {away[0]!r})")
        if away:
            raise FailedPrecondition(
                f"volumes {', '.join(repr(v) for v in away)} are not on node {self.node_id!r}, "
                "where the other members are: a group snapshot needs every member on one "
                "node (groups across nodes are not supported yet)")
        members = []
        for volume_id in volume_ids:
            at = found[volume_id]
            assert at is not None
            members.append((at[0], at[1], member_name(group, volume_id)))
        return self._info(self.node.snapshot_group(group, members, timeout=timeout))

    def get(self, group_id: str) -> GroupInfo:
        pool, name = naming.split_id(group_id)
        return self._info(self.node.get_snapshot_group(name, pool=pool))

    def delete(self, group_id: str) -> None:
        pool, name = naming.split_id(group_id)
        self.node.delete_snapshot_group(name, pool=pool)

    def _info(self, group: groups.GroupSnapshot) -> GroupInfo:
        snapshots = []
        for m in group.members:
            if m in group.missing:
                continue
            snap = self.node.pool(m.pool).get_snapshot(m.snapshot)
            snapshots.append(SnapshotInfo(
                snapshot_id=naming.join_id(m.pool, m.snapshot),
                source_volume_id=naming.join_id(m.pool, m.volume),
                size_bytes=snap.size, created_at=snap.created_at, ready=snap.ready))
        first = group.members[0].pool
        return GroupInfo(group_snapshot_id=naming.join_id(first, group.name),
                         snapshots=tuple(snapshots),
                         member_ids=tuple(naming.join_id(m.pool, m.snapshot) for m in group.members),
                         created_at=group.created_at,
                         ready=group.complete and all(s.ready for s in snapshots))
