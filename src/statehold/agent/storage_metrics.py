"""Prometheus metrics of this node's pools and volumes, on the node agent's metrics endpoint
(``operator run --role node`` registers this collector; docs/metrics.md).

Read at scrape time from the engine (``Pool.capacity()``, the volume and snapshot records),
``statvfs`` of a mounted volume and the loop device's ``/sys/block/loopN/stat``; nothing is
cached, so a scrape always shows the state of that moment.

Per pool (``pool`` label; a node has a handful):

* ``statehold_pool_capacity_bytes``, ``_used_bytes``, ``_free_bytes``, ``_provisioned_bytes``,
  ``_allocatable_bytes``; ``statehold_pool_overprovision_ratio`` (the configured ratio) and
  ``statehold_pool_overprovisioned_ratio`` (provisioned / capacity, what the alerts watch);
* ``statehold_pool_used_ratio`` (used / capacity), ``statehold_pool_threshold_ratio{level}``
  (the pool's ``warning`` and ``critical`` marks, as ratios, so an alert compares the two
  without knowing the marks) and ``statehold_pool_space_state{state}`` (1 for the pool's
  level now, ``ok``/``warning``/``critical``/``full``, 0 for the others).

Per volume (``volume`` label = ``pool/name``), only with ``per_volume`` (the node agent's
``--metrics-per-volume``, on by default; clusters with thousands of volumes turn it off to
keep the series count bounded):

* ``statehold_volume_size_bytes``; ``statehold_volume_used_bytes`` (the filesystem's statvfs
  while the volume is mounted; absent otherwise and for block volumes);
* ``statehold_volume_device_ios_total{op}``, ``_device_bytes_total{op}``,
  ``_device_io_seconds_total{op}`` (``op``: ``read``/``write``): the loop device's own
  counters from sysfs while attached (they restart at 0 when the device is attached again);
* ``statehold_volume_snapshots`` and ``statehold_volume_snapshot_bytes`` (bytes the
  snapshots of the volume hold on the pool's disk);
* ``statehold_volume_last_trim_timestamp_seconds`` and ``statehold_volume_trim_released_bytes``
  (when the volume's filesystem was last trimmed, and what that gave back to the pool; only
  for volumes trimmed since they were made).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statehold.engine.capacity import Level
from statehold.engine.pool import Pool
from statehold.errors import StateholdError

SECTOR = 512
"""/sys/block/*/stat counts 512-byte sectors whatever the device's block size."""

SYS_BLOCK = Path("/sys/block")


@dataclass(frozen=True, slots=True)
class DeviceStat:
    read_ios: int
    read_bytes: int
    read_seconds: float
    write_ios: int
    write_bytes: int
    write_seconds: float


def parse_block_stat(text: str) -> DeviceStat:
    """The kernel's ``/sys/block/<dev>/stat`` line (Documentation/block/stat.rst): reads
    completed, merged, sectors, ms; writes completed, merged, sectors, ms; ..."""
    fields = [int(f) for f in text.split()]
    if len(fields) < 8:
        raise ValueError(f"block stat has {len(fields)} fields, expected at least 8")
    return DeviceStat(read_ios=fields[0], read_bytes=fields[2] * SECTOR, read_seconds=fields[3] / 1000,
                      write_ios=fields[4], write_bytes=fields[6] * SECTOR, write_seconds=fields[7] / 1000)


def device_stat(device: str, root: Path = SYS_BLOCK) -> DeviceStat | None:
    """``/dev/loopN`` -> its counters; None when the device is gone (detached meanwhile)."""
    try:
        return parse_block_stat((root / Path(device).name / "stat").read_text())
    except (OSError, ValueError):
        return None


def _allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _fs_used(target: str) -> int | None:
    try:
        st = os.statvfs(target)
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class StorageCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[Pool]], *, per_volume: bool = True,
                 sys_block: Path = SYS_BLOCK) -> None:
        self._pools, self.per_volume, self._sys = pools, per_volume, sys_block

    def collect(self) -> Iterator[Metric]:
        def pool_gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"statehold_pool_{name}", doc, labels=["pool"])

        capacity = pool_gauge("capacity_bytes", "Bytes the pool's filesystem can hold")
        used = pool_gauge("used_bytes", "Bytes physically allocated in the pool")
        free = pool_gauge("free_bytes", "Bytes physically free in the pool")
        provisioned = pool_gauge("provisioned_bytes", "Sum of the sizes of the pool's volumes (thin)")
        allocatable = pool_gauge("allocatable_bytes", "Bytes new volumes and expansions may still take")
        ratio = pool_gauge("overprovision_ratio", "Configured over-provisioning ratio")
        over = pool_gauge("overprovisioned_ratio", "Provisioned bytes / capacity bytes")
        used_ratio = pool_gauge("used_ratio", "Used bytes / capacity bytes")
        marks = GaugeMetricFamily("statehold_pool_threshold_ratio", "The pool's warning and "
                                  "critical marks, as a share of its capacity", labels=["pool", "level"])
        state = GaugeMetricFamily("statehold_pool_space_state", "1 for the pool's space level "
                                  "now (ok, warning, critical, full), 0 for the others",
                                  labels=["pool", "state"])
        vol = ["volume"]
        size = GaugeMetricFamily("statehold_volume_size_bytes", "Provisioned size of the volume", labels=vol)
        vused = GaugeMetricFamily("statehold_volume_used_bytes", "Bytes used in the volume's "
                                  "filesystem (while mounted)", labels=vol)
        ios = CounterMetricFamily("statehold_volume_device_ios", "I/Os completed by the volume's "
                                  "loop device", labels=["volume", "op"])
        nbytes = CounterMetricFamily("statehold_volume_device_bytes", "Bytes moved by the volume's "
                                     "loop device", labels=["volume", "op"])
        secs = CounterMetricFamily("statehold_volume_device_io_seconds", "Time the volume's loop "
                                   "device spent on I/O", labels=["volume", "op"])
        snaps = GaugeMetricFamily("statehold_volume_snapshots", "Snapshots of the volume", labels=vol)
        snap_bytes = GaugeMetricFamily("statehold_volume_snapshot_bytes", "Bytes the volume's "
                                       "snapshots hold on the pool's disk", labels=vol)
        trimmed = GaugeMetricFamily("statehold_volume_last_trim_timestamp_seconds", "When the "
                                    "volume's filesystem was last trimmed", labels=vol)
        released = GaugeMetricFamily("statehold_volume_trim_released_bytes", "Bytes the last "
                                     "trim of the volume gave back to the pool", labels=vol)
        for pool in self._pools():
            try:
                space = pool.space()
            except StateholdError:
                continue
            cap = space.capacity
            labels = [pool.name]
            used_ratio.add_metric(labels, cap.used / cap.total if cap.total else 1.0)
            marks.add_metric([pool.name, "warning"], space.thresholds.warning / 100)
            marks.add_metric([pool.name, "critical"], space.thresholds.critical / 100)
            for level in Level:
                state.add_metric([pool.name, level.value], 1.0 if space.level is level else 0.0)
            capacity.add_metric(labels, cap.total)
            used.add_metric(labels, cap.used)
            free.add_metric(labels, cap.free)
            provisioned.add_metric(labels, cap.provisioned)
            allocatable.add_metric(labels, cap.allocatable)
            ratio.add_metric(labels, cap.overprovision_ratio)
            over.add_metric(labels, cap.provisioned / cap.total if cap.total else 0.0)
            if self.per_volume:
                with contextlib.suppress(StateholdError):
                    self._volumes(pool, size, vused, ios, nbytes, secs, snaps, snap_bytes)
                with contextlib.suppress(StateholdError):
                    self._trims(pool, trimmed, released)
        yield from (capacity, used, free, provisioned, allocatable, ratio, over, used_ratio,
                    marks, state)
        if self.per_volume:
            yield from (size, vused, ios, nbytes, secs, snaps, snap_bytes, trimmed, released)

    @staticmethod
    def _trims(pool: Pool, trimmed: GaugeMetricFamily, released: GaugeMetricFamily) -> None:
        for name, last in sorted(pool.trim_records().items()):
            trimmed.add_metric([f"{pool.name}/{name}"], last.last)
            released.add_metric([f"{pool.name}/{name}"], last.released)

    def _volumes(self, pool: Pool, size: GaugeMetricFamily, vused: GaugeMetricFamily,
                 ios: CounterMetricFamily, nbytes: CounterMetricFamily, secs: CounterMetricFamily,
                 snaps: GaugeMetricFamily, snap_bytes: GaugeMetricFamily) -> None:
        held: dict[str, tuple[int, int]] = {}
        for snap in pool.list_snapshots():
            count, total = held.get(snap.source_volume, (0, 0))
            held[snap.source_volume] = (count + 1, total + _allocated(snap.path))
        for v in pool.list_volumes():
            label = [v.id]
            size.add_metric(label, v.size)
            if v.mounts and v.fs is not None:
                fs_used = _fs_used(v.mounts[0])
                if fs_used is not None:
                    vused.add_metric(label, fs_used)
            count, total = held.get(v.name, (0, 0))
            snaps.add_metric(label, count)
            snap_bytes.add_metric(label, total)
            stat = device_stat(v.device, self._sys) if v.device else None
            if stat is None:
                continue
            for op, n, b, s in (("read", stat.read_ios, stat.read_bytes, stat.read_seconds),
                                ("write", stat.write_ios, stat.write_bytes, stat.write_seconds)):
                ios.add_metric([v.id, op], n)
                nbytes.add_metric([v.id, op], b)
                secs.add_metric([v.id, op], s)
