"""What the controller needs of the node agents to run replicated volumes: the ``Agents``
port (docs/design/replication.md §8-§9).

The controller never imports the agent (layers: controller | agent are siblings); the
process that runs the operator wires an implementation over the agents' gRPC API (mTLS:
``statehold.agent.fleet.AgentFleet``, built by ``statehold operator run --role cluster``),
and tests use a recording fake. The port's data (:class:`CopyReport`, :class:`CopyTarget`)
lives in :mod:`statehold.replication.cluster` so that the agent can build it without
importing the controller; it is re-exported here. ``volume`` is always the CSI volume handle
(``<pool>/<volume>``, the id of the replicated volume); every copy has the same engine
volume name, so an agent finds its copy whatever pool it lives in.

Contract of every implementation:

* Every method may be called again after a success, a failure or a crash (the reconciler
  is level-triggered): ``create_copy`` of a copy that exists, ``promote`` at the epoch the
  copy already has as primary, ``release`` of a copy already gone, ``export_pool`` of a
  pool already exported are successes.
* ``promote`` is called only after the controller recorded ``status.epoch``/``primary``
  by compare-and-set; it refuses (``Fenced``/``FailedPrecondition``) an epoch not newer
  than the copy's, and a copy still seeding.
* ``final_sync`` returns the point the target acknowledged; it raises ``Aborted`` while
  the volume is still staged on the primary (the pod has not gone yet: try again later);
  any other error means the final sync failed and the move is abandoned.
* Errors are :mod:`statehold.errors`: ``NotFound`` (the node holds no copy),
  ``Unavailable`` (the node's agent does not answer), ``FailedPrecondition``/``Fenced``
  (wrong role or epoch), ``OutOfCapacity`` (no room for a new copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from statehold.replication.cluster import ROLES, CopyReport, CopyTarget

__all__ = ["ROLES", "Agents", "CopyReport", "CopyTarget"]


class Agents(Protocol):
    """The node agents, as the controller calls them (see the module contract)."""

    def copy_state(self, node: str, volume: str) -> CopyReport:
        """The copy of ``volume`` on ``node``; NotFound when the node holds none."""
        ...

    def create_copy(self, node: str, volume: str, *, pool: str, size: int) -> None:
        """Make an empty copy (seeding, epoch 0) of ``size`` bytes in ``pool`` of ``node``."""
        ...

    def set_replicas(self, primary: str, volume: str, replicas: Sequence[CopyTarget], *,
                     rpo_seconds: int = 0) -> None:
        """The copies the primary on ``primary`` streams to (replaces the list), and the
        volume's RPO, which the primary's agent exports beside their lag."""
        ...

    def promote(self, node: str, volume: str, epoch: int) -> None:
        """Make the copy on ``node`` the writable primary at ``epoch``."""
        ...

    def demote(self, node: str, volume: str, epoch: int) -> None:
        """Tell the copy on ``node`` that ``epoch`` exists (a primary of an older one
        becomes stale and is resynced as a replica)."""
        ...

    def final_sync(self, primary: str, volume: str, to: str) -> str:
        """With the volume unstaged on ``primary``: take a last point, stream it to ``to``,
        and return it once ``to`` acknowledged it (Aborted while still staged)."""
        ...

    def release(self, node: str, volume: str) -> None:
        """Delete the copy on ``node``: its point snapshots, state and engine volume."""
        ...

    def delete_copy(self, node: str, volume: str) -> None:
        """Delete the copy on ``node`` even if it is the primary: the volume itself is
        deleted (its PV was reclaimed). FailedPrecondition while it is attached or mounted
        there; a copy already gone is a success."""
        ...

    def export_pool(self, node: str, pool: str) -> None:
        """Unmount and detach the retired ``pool`` of ``node`` and forget it there (its
        disks keep their data). FailedPrecondition while a volume or snapshot is left in it
        or it is busy; a pool already exported is a success."""
        ...
