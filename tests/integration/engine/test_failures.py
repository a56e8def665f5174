"""An operation that fails midway (an exception, not a crash) settles its intent at once.

The fault hook raises at each step; without any restart the pool must already be
consistent, and repeating the request must succeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import loop, mounts
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
def faulty(engine_home: Path) -> Iterator[tuple[Node, Pool, Faults]]:
    faults = Faults()
    node = Node(engine_home, fault_hook=faults)
    try:
        pool = node.create_pool(PoolSpec(name="f", image_size=2 * GiB))
        pool.create_volume("base", 64 * MiB, fs=FsType.EXT4)
        pool.create_snapshot("base", "base-snap")
        yield node, pool, faults
    finally:
        close_node(node)


POOL_OPS = ("create_pool", "import_pool")
EXPORT_OPS = ("export_pool",)
"""Its steps are failed, and crashed, in tests/integration/engine/test_export_release.py."""


def _volume_steps() -> list[tuple[str, str]]:
    return [(op, step) for op, steps in STEPS.items() for step in steps
            if op not in POOL_OPS + EXPORT_OPS]


def _pool_steps() -> list[tuple[str, str]]:
    return [(op, step) for op, steps in STEPS.items() for step in steps if op in POOL_OPS]


@pytest.mark.parametrize(("op", "step"), _pool_steps())
def test_failure_while_creating_or_importing_a_pool_leaks_nothing(
        faulty: tuple[Node, Pool, Faults], op: str, step: str) -> None:
    node, _, faults = faulty
    image = node.home / "disks" / "np-0.img"
    spec = PoolSpec(name="np", image_size=GiB)
    if op == "import_pool":
        node.create_pool(spec)
        node.export_pool("np")
    faults.step = step
    with pytest.raises(Boom):
        node.create_pool(spec) if op == "create_pool" else node.import_pool([str(image)])
    committed = step == "create_pool.commit"
    if not committed:
        assert "np" not in {p.name for p in node.pools()}
        assert loop.find(image) == []
        assert mounts.mount_at(node.home / "pools" / "np") is None
        assert list((node.home / "pools").glob(".import-*")) == []
        assert image.exists() == (op == "import_pool")
        pool = node.create_pool(spec) if op == "create_pool" else node.import_pool([str(image)])
    else:
        pool = node.pool("np")
    assert pool.create_volume("v", 64 * MiB, fs=FsType.EXT4).size == 64 * MiB


@pytest.mark.parametrize(("op", "step"), _volume_steps())
def test_failure_at_any_step_leaves_a_consistent_pool(
        faulty: tuple[Node, Pool, Faults], op: str, step: str) -> None:
    node, pool, faults = faulty
    if op == "snapshot_group":  # a mounted member: every step of the freeze happens
        pool.mount("base", node.home / "mnt" / "base")
    actions = {
        "create_volume": lambda: pool.create_volume("new", 64 * MiB, fs=FsType.EXT4),
        "clone": lambda: pool.create_volume("new", 64 * MiB, fs=FsType.EXT4,
                                            source=Source(SourceKind.SNAPSHOT, "base-snap")),
        "create_snapshot": lambda: pool.create_snapshot("base", "snap"),
        "expand": lambda: pool.expand("base", 128 * MiB),
        "delete_volume": lambda: pool.delete_volume("base"),
        "delete_snapshot": lambda: pool.delete_snapshot("base-snap"),
        "snapshot_group": lambda: node.snapshot_group("g", [("f", "base", "g-base")]),
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
