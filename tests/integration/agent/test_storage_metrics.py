"""The node agent's pool and volume metrics, scraped over HTTP after real I/O on a loop device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from statehold.agent.storage_metrics import StorageCollector
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import VolumeMode
from tests.fixtures.metrics import scrape, served, value

pytestmark = [pytest.mark.root]

MiB = 1 << 20
GiB = 1 << 30


def _write(device: str, nbytes: int) -> None:
    """Write ``nbytes`` of non-zero data straight to the device (O_DIRECT: no page cache)."""
    import mmap

    buf = mmap.mmap(-1, 4 * MiB)
    buf.write(b"\xa5" * (4 * MiB))
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        done = 0
        while done < nbytes:
            done += os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def test_a_1gib_write_moves_the_write_bytes_counter_by_at_least_1gib(node: Node, pool: Pool) -> None:
    vol = pool.create_volume("hot", GiB + 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    device = pool.attach(vol.name)
    registry = CollectorRegistry()
    registry.register(StorageCollector(node.pools))
    try:
        with served(registry) as url:
            before = scrape(url)
            w0 = value(before, "statehold_volume_device_bytes_total", volume=vol.id, op="write")
            assert w0 is not None
            _write(device, GiB)
            after = scrape(url)
    finally:
        pool.detach(vol.name)
    w1 = value(after, "statehold_volume_device_bytes_total", volume=vol.id, op="write")
    assert w1 is not None and w1 - w0 >= GiB
    ios = value(after, "statehold_volume_device_ios_total", volume=vol.id, op="write")
    assert ios is not None and ios >= GiB // (4 * MiB)
    assert value(after, "statehold_volume_size_bytes", volume=vol.id) == vol.size
    cap = pool.capacity()
    assert value(after, "statehold_pool_capacity_bytes", pool="test") == cap.total
    assert value(after, "statehold_pool_provisioned_bytes", pool="test") == cap.provisioned
    # the pool holds the written GiB physically now
    used = value(after, "statehold_pool_used_bytes", pool="test")
    assert used is not None and used >= GiB


def test_snapshots_are_counted_per_volume(node: Node, pool: Pool) -> None:
    vol = pool.create_volume("data", 400 * MiB)
    pool.create_snapshot("data", "s1", freeze=False)
    pool.create_snapshot("data", "s2", freeze=False)
    registry = CollectorRegistry()
    registry.register(StorageCollector(node.pools))
    with served(registry) as url:
        got = scrape(url)
    assert value(got, "statehold_volume_snapshots", volume=vol.id) == 2
    assert value(got, "statehold_volume_snapshot_bytes", volume=vol.id) is not None
    assert value(got, "statehold_volume_used_bytes", volume=vol.id) is None  # not mounted


def test_without_per_volume_only_pool_series_are_exported(node: Node, pool: Pool) -> None:
    pool.create_volume("quiet", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    registry = CollectorRegistry()
    registry.register(StorageCollector(node.pools, per_volume=False))
    with served(registry) as url:
        got = scrape(url)
    assert value(got, "statehold_pool_capacity_bytes", pool="test") is not None
    assert not [name for name, _ in got if name.startswith("statehold_volume_")]


def test_a_mounted_volume_reports_its_filesystem_usage(node: Node, pool: Pool, scratch: Path) -> None:
    vol = pool.create_volume("files", 400 * MiB)
    target = scratch / "mnt"
    target.mkdir()
    pool.mount(vol.name, target)
    registry = CollectorRegistry()
    registry.register(StorageCollector(node.pools))
    try:
        with served(registry) as url:
            empty = value(scrape(url), "statehold_volume_used_bytes", volume=vol.id)
            data = target / "data"
            data.write_bytes(b"\x5a" * (32 * MiB))
            os.sync()
            full = value(scrape(url), "statehold_volume_used_bytes", volume=vol.id)
    finally:
        pool.unmount(vol.name, target)
    assert empty is not None and full is not None
    assert full - empty >= 32 * MiB
