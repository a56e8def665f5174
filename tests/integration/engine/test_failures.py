"""An operation that fails midway (an exception, not a crash) settles its intent at once.

The fault hook raises at each step; without any restart the pool must already be
consistent, and repeating the request must succeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.steps import STEPS
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, Source, SourceKind
from tests.fixtures.engine import close_node
from tests.integration.engine.test_crash import assert_consistent

pytestmark = pytest.mark.root


class Boom(Exception):
    pass


class Faults:
    def __init__(self) -> None:
        self.step: str | None = None

    def __call__(self, step: str) -> None:
        if step == self.step:
            self.step = None  # once
            raise Boom(step)


@pytest.fixture
def faulty(engine_home: Path) -> Iterator[tuple[Pool, Faults]]:
    faults = Faults()
    node = Node(engine_home, fault_hook=faults)
    try:
        pool = node.create_pool(PoolSpec(name="f", image_size=2 * GiB))
        pool.create_volume("base", 64 * MiB, fs=FsType.EXT4)
        pool.create_snapshot("base", "base-snap")
        yield pool, faults
    finally:
        close_node(node)


def _all_steps() -> list[tuple[str, str]]:
    return [(op, step) for op, steps in STEPS.items() for step in steps]


@pytest.mark.parametrize(("op", "step"), _all_steps())
def test_failure_at_any_step_leaves_a_consistent_pool(faulty: tuple[Pool, Faults], op: str,
                                                      step: str) -> None:
    pool, faults = faulty
    actions = {
        "create_volume": lambda: pool.create_volume("new", 64 * MiB, fs=FsType.EXT4),
        "clone": lambda: pool.create_volume("new", 64 * MiB, fs=FsType.EXT4,
                                            source=Source(SourceKind.SNAPSHOT, "base-snap")),
        "create_snapshot": lambda: pool.create_snapshot("base", "snap"),
        "expand": lambda: pool.expand("base", 128 * MiB),
        "delete_volume": lambda: pool.delete_volume("base"),
        "delete_snapshot": lambda: pool.delete_snapshot("base-snap"),
    }
    faults.step = step
    with pytest.raises(Boom):
        actions[op]()
    assert_consistent(pool)
    if op == "delete_volume":  # a recorded delete is finished, not undone
        assert "base" not in {v.name for v in pool.list_volumes()}
    elif op == "delete_snapshot":
        assert pool.list_snapshots() == []
    else:
        actions[op]()  # the retry succeeds (or is an idempotent no-op)
    assert_consistent(pool)
