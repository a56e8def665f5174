"""Group snapshots of local volumes: the CSI GroupController's requests -> ``Node.snapshot_group``.

Ids: a group snapshot is ``"<pool>/<group>"`` (the pool of its first member; every member
pool holds the record), its members are ordinary snapshots ``"<pool>/<member>"`` that the
Controller service reads, deletes and restores like any other. A member's engine name is
derived from the group's name and the volume id, so a retried CreateVolumeGroupSnapshot
names the same snapshots.

Members all on this node (in one pool or several): the engine freezes them from here. Members
on several nodes: with the ports of :mod:`statehold.csi.remote_groups` wired (the node
agents' two-phase freeze, docs/design/group-snapshots.md) this plugin coordinates, its own
node's members included, through the agents; without them such a group is
FAILED_PRECONDITION (the spec's "cannot snapshot multiple volumes together"). A group
across nodes is identified by a pool of this node, whose record lists the nodes involved:
Get and Delete ask (or tell) each node's agent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from statehold.csi import naming
from statehold.csi.backend import SHARED_PREFIX, SnapshotInfo
from statehold.csi.remote_groups import GroupsAcrossNodes, PoolNodes
from statehold.engine import groupparts, groups
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
    def __init__(self, node: Node, node_id: str, *, remote: GroupsAcrossNodes | None = None,
                 pool_nodes: PoolNodes | None = None) -> None:
        self.node = node
        self.node_id = node_id
        self.remote = remote
        self.pool_nodes = pool_nodes

    def _is_here(self, pool: str) -> bool:
        try:
            self.node.pool(pool)
        except (NotFound, Unavailable):
            return False
        return True

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
        if self.remote is not None and self.pool_nodes is not None \
                and not all(self._is_here(naming.split_id(v)[0]) for v in volume_ids):
            return self._create_across(group, volume_ids, timeout)
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
                "where the other members are: this plugin takes groups across nodes only "
                "through its node's agent, and was started without it (statehold csi "
                "--agent-socket; the chart passes it when agent.enabled is true)")
        members = []
        for volume_id in volume_ids:
            at = found[volume_id]
            assert at is not None
            members.append((at[0], at[1], member_name(group, volume_id)))
        return self._info(self.node.snapshot_group(group, members, timeout=timeout))

    def get(self, group_id: str) -> GroupInfo:
        pool, name = naming.split_id(group_id)
        nodes = self._across(pool, name)
        if nodes:
            return self._info_across(pool, name, nodes)
        return self._info(self.node.get_snapshot_group(name, pool=pool))

    def delete(self, group_id: str) -> None:
        pool, name = naming.split_id(group_id)
        nodes = self._across(pool, name)
        if nodes:
            assert self.remote is not None
            self.remote.delete(name, nodes)
            return
        self.node.delete_snapshot_group(name, pool=pool)

    # -- groups across nodes -------------------------------------------------------------
    def _create_across(self, group: str, volume_ids: Sequence[str], timeout: float) -> GroupInfo:
        assert self.remote is not None and self.pool_nodes is not None
        parts: dict[str, list[groups.Member]] = {}
        home = None
        for volume_id in volume_ids:
            pool, volume = naming.split_id(volume_id)
            here = self._is_here(pool)
            node = self.node_id if here else self.pool_nodes.node_of(pool)
            if node is None:
                raise NotFound(f"volume {volume_id!r}: no node is known for pool {pool!r}")
            if here and home is None:
                home = pool
            parts.setdefault(node, []).append(
                groups.Member(pool, volume, member_name(group, volume_id)))
        if home is None:
            raise NotFound(f"no volume of the group is on node {self.node_id!r} "
                           f"(e.g. {volume_ids[0]!r})")
        self.remote.create(group, parts, timeout)
        return self._info_across(home, group, sorted(parts))

    def _across(self, pool: str, name: str) -> list[str]:
        """The nodes of a group across nodes recorded in this node's ``pool`` ([]: a local
        group, or no record here)."""
        try:
            doc = groupparts.read_part(self.node.pool(pool), name)
        except (NotFound, Unavailable):
            return []
        nodes = [str(n) for n in (doc or {}).get("nodes") or ()]
        if nodes and self.remote is None:
            raise FailedPrecondition(f"group snapshot {pool}/{name} spans nodes "
                                     f"{', '.join(nodes)}; this plugin reaches no node agents")
        return nodes

    def _info_across(self, home: str, name: str, nodes: Sequence[str]) -> GroupInfo:
        assert self.remote is not None
        parts = self.remote.parts(name, nodes)
        snapshots, member_ids, whole, created = [], [], True, 0.0
        for node in nodes:
            part = parts[node]
            if not part.found:
                whole = False
                continue
            created = created or float(part.created_at)
            gone = {(m.pool, m.snapshot) for m in part.missing}
            whole = whole and not gone
            for m in part.members:
                member_ids.append(naming.join_id(m.pool, m.snapshot))
                if (m.pool, m.snapshot) in gone:
                    continue
                size = 0  # another node's: unknown here (CSI: 0 = not specified)
                if node == self.node_id:
                    size = self.node.pool(m.pool).get_snapshot(m.snapshot).size
                snapshots.append(SnapshotInfo(
                    snapshot_id=naming.join_id(m.pool, m.snapshot),
                    source_volume_id=naming.join_id(m.pool, m.volume),
                    size_bytes=size, created_at=float(part.created_at)))
        attempts = {parts[n].attempt for n in nodes if parts[n].found}
        return GroupInfo(group_snapshot_id=naming.join_id(home, name), snapshots=tuple(snapshots),
                         member_ids=tuple(member_ids), created_at=created,
                         ready=whole and len(attempts) == 1)

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
