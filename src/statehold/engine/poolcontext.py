"""What the pool's operation modules need of a pool, as a Protocol.

:mod:`lifecycle`, :mod:`snapshotting` and :mod:`recovery` act on a pool; :class:`Pool`
calls them. Typing those modules against this Protocol instead of :class:`Pool` keeps the
arrows one way (pool -> operations -> this module), so no module imports the pool back.
:class:`statehold.engine.pool.Pool` satisfies it structurally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from statehold.engine.layouts import Layout
from statehold.engine.metadata import Metadata
from statehold.engine.steps import FaultHook
from statehold.engine.types import Capacity


class PoolContext(Protocol):
    """A mounted pool as its operations see it: paths, metadata, fault points, settling."""

    name: str
    mountpoint: Path
    db: Metadata
    fault: FaultHook
    is_directory: bool
    layout: Layout

    @property
    def meta_dir(self) -> Path: ...

    @property
    def volumes_dir(self) -> Path: ...

    @property
    def snapshots_dir(self) -> Path: ...

    def volume_path(self, name: str) -> Path: ...

    def snapshot_path(self, name: str) -> Path: ...

    def capacity(self) -> Capacity:
        """Physical and thin accounting (see :meth:`Pool.capacity`)."""
        ...

    def settle(self, intent_id: int) -> list[str]:
        """Finish or roll back one intent of an operation that failed midway."""
        ...
