"""The pools of this node as the controller may ask the agent to let go of them: the export
of a retired pool (docs/design/replication.md §9.7, RPC ``ExportPool``).

:class:`PoolExports` is the servicer's port; :class:`EnginePools` implements it over the
agent's engine :class:`~statehold.engine.node.Node`. The controller exports a pool only once
the cluster knows of nothing left in it, and the agent checks again here, on the node: a
pool that still holds any volume or snapshot is refused (listed), whatever the cluster
thinks. The engine's export then refuses a pool whose volumes are attached, and runs the
release protocol with the other Statehold processes of the node (the CSI node plugin, the
node operator), which let go of the pool; one still held after the wait is Temporary
(UNAVAILABLE) naming the holders, and the next call finishes it
(docs/design/pool-metadata.md, "Export").
"""

from __future__ import annotations

from typing import Protocol

from statehold.engine.node import Node
from statehold.errors import FailedPrecondition, NotFound


class PoolExports(Protocol):
    def export(self, pool: str) -> bool:
        """Export ``pool``: True once done now, False when this node does not have it (an
        earlier export), FailedPrecondition while anything is left in it, Temporary while
        a process still holds it."""
        ...


class EnginePools:
    def __init__(self, node: Node) -> None:
        self.node = node

    def export(self, pool: str) -> bool:
        self.node.refresh()  # a pool exported or imported by a CLI beside the agent
        if pool in self.node.exporting:  # an earlier export that waited in vain or died
            self.node.export_pool(pool)
            return True
        if pool in self.node.errors:  # its disks are gone: forgetting it is all there is
            self.node.export_pool(pool)
            return True
        try:
            p = self.node.pool(pool)
        except NotFound:
            return False
        held = [f"volume {v.name}" for v in p.list_volumes()]
        held += [f"snapshot {s.name}" for s in p.list_snapshots()]
        if held:
            shown = ", ".join(held[:20]) + (f" and {len(held) - 20} more" if len(held) > 20 else "")
            raise FailedPrecondition(f"pool {pool!r} is not empty: {shown}")
        self.node.export_pool(pool)
        return True
