"""Many threads on one pool (a CSI server): operations serialise, nothing is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB, Source, SourceKind

pytestmark = pytest.mark.root


def _life(pool: Pool, scratch: Path, i: int) -> str:
    name = f"t{i}"
    pool.create_volume(name, 64 * MiB, fs=FsType.EXT4)
    pool.create_volume(name, 64 * MiB, fs=FsType.EXT4)  # retried concurrently: idempotent
    mnt = scratch / name
    pool.mount(name, mnt)
    (mnt / "id").write_text(name)
    pool.create_snapshot(name, f"{name}-s")
    pool.expand(name, 96 * MiB)
    pool.create_volume(f"{name}-c", 64 * MiB, fs=FsType.EXT4,
                       source=Source(SourceKind.SNAPSHOT, f"{name}-s"))
    pool.mount(f"{name}-c", scratch / f"{name}-c")
    return (scratch / f"{name}-c" / "id").read_text()


def test_parallel_lifecycles_on_one_pool(node: Node, pool: Pool, scratch: Path) -> None:
    with ThreadPoolExecutor(max_workers=6) as ex:
        got = list(ex.map(lambda i: _life(pool, scratch, i), range(6)))
    assert got == [f"t{i}" for i in range(6)]
    assert len(pool.list_volumes()) == 12 and len(pool.list_snapshots()) == 6
    assert pool.db.intents() == []
    assert pool.capacity().provisioned == 6 * (96 + 64) * MiB
    # a second Node in the same process (a CLI next to the agent) sees the same state
    other = Node(node.home)
    try:
        assert other.recovered["test"] == []
        assert {v.name for v in other.pool("test").list_volumes()} == {
            v.name for v in pool.list_volumes()}
    finally:
        other.close()
