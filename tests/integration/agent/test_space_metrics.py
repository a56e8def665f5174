"""Pool space and trims in the node agent's metrics (issue 14), scraped over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from statehold.agent.storage_metrics import StorageCollector
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, MiB
from tests.fixtures.metrics import scrape, served, value

pytestmark = [pytest.mark.root]


def states(samples: dict, pool: str) -> dict[str, float | None]:  # type: ignore[type-arg]
    return {s: value(samples, "statehold_pool_space_state", pool=pool, state=s)
            for s in ("ok", "warning", "critical", "full")}


def test_marks_level_and_last_trim_are_exported(node: Node, pool: Pool, engine_home: Path) -> None:
    pool.create_volume("data", 512 * MiB, fs=FsType.XFS)
    target = engine_home / "data"
    pool.mount("data", target)
    with open(target / "junk", "wb") as f:
        f.write(os.urandom(32 * MiB))
        os.fsync(f.fileno())
    (target / "junk").unlink()
    trimmed = pool.trim("data")
    registry = CollectorRegistry()
    registry.register(StorageCollector(node.pools))
    with served(registry) as url:
        before = scrape(url)
        pool.set_thresholds(1, 2)  # the pool holds more than 2 % of its capacity now
        after = scrape(url)
    assert value(before, "statehold_pool_threshold_ratio", pool="test", level="warning") == 0.8
    assert value(before, "statehold_pool_threshold_ratio", pool="test", level="critical") == 0.9
    ratio = value(before, "statehold_pool_used_ratio", pool="test")
    assert ratio is not None and 0.02 < ratio < 0.8
    assert states(before, "test") == {"ok": 1.0, "warning": 0.0, "critical": 0.0, "full": 0.0}
    assert states(after, "test") == {"ok": 0.0, "warning": 0.0, "critical": 1.0, "full": 0.0}
    assert value(after, "statehold_pool_threshold_ratio", pool="test", level="critical") == 0.02
    vol = "test/data"
    assert value(after, "statehold_volume_trim_released_bytes", volume=vol) == trimmed.released
    assert value(after, "statehold_volume_last_trim_timestamp_seconds", volume=vol) == trimmed.at
    assert trimmed.released >= 31 * MiB
