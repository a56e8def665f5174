"""What the GroupController needs to take a group whose members live on several nodes: the
ports, implemented outside ``csi`` (which never imports the agent).

* :class:`GroupsAcrossNodes`: the two-phase freeze through the node agents,
  ``statehold.agent.groupcoordinator.Coordinator`` (from ``AgentFleet.group_coordinator``
  with this node's agent certificate); docs/design/group-snapshots.md.
* :class:`PoolNodes`: which node holds a pool (a volume id names its pool; a StoragePool
  names its node): :class:`KubePoolNodes` in a cluster.

The wiring is the CLI's: ``statehold csi --agent-socket`` hands the plugin
``statehold.agent.localsock.LocalGroupsClient``, which asks this node's agent (over a
node-local Unix socket) to coordinate; the agent holds the node certificate, the plugin
none (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from statehold.engine.groups import Member
from statehold.errors import NotFound
from statehold.kube.facade import Kube
from statehold.kube.kinds import STORAGE_POOL


class TakenGroup(Protocol):
    @property
    def created_at(self) -> float: ...

    @property
    def members(self) -> Mapping[str, tuple[Member, ...]]: ...


class GroupsAcrossNodes(Protocol):
    def create(self, name: str, parts: Mapping[str, Sequence[Member]], lease: float) -> TakenGroup:
        """Take the group (or find it whole); Temporary when a lease ended or a node could
        not be reached (nothing kept), a node's own error otherwise."""
        ...

    def parts(self, name: str, nodes: Sequence[str]) -> Mapping[str, Any]:
        """Each node's part (``found``, ``members``, ``missing``, ``created_at``)."""
        ...

    def delete(self, name: str, nodes: Sequence[str]) -> None:
        ...


class PoolNodes(Protocol):
    def node_of(self, pool: str) -> str | None:
        """The node that holds ``pool`` (None: unknown)."""
        ...


class StaticPoolNodes:
    """A fixed pool -> node map (standalone use, tests)."""

    def __init__(self, nodes: Mapping[str, str]) -> None:
        self.nodes = dict(nodes)

    def node_of(self, pool: str) -> str | None:
        return self.nodes.get(pool)


class KubePoolNodes:
    """The pool -> node map of a cluster: each StoragePool's ``spec.node``, read when asked
    (a pool's node never changes while it lives; a new pool is found at once)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def node_of(self, pool: str) -> str | None:
        try:
            found = self.kube.get(STORAGE_POOL, pool)
        except NotFound:
            return None
        return str((found.get("spec") or {}).get("node") or "") or None
