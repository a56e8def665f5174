"""Prometheus metrics of the volumes' I/O limits, on the agent's metrics endpoint.

* ``statehold_volume_limit{volume,limit,source}``: a configured limit (``read_iops``,
  ``write_iops``, ``read_bps``, ``write_bps``) from the class or an override; limits that
  are not set are not exported;
* ``statehold_volume_throttle_rules{volume}``: cgroup rules the kernel holds for the
  attached volume's loop device (0: attached and unthrottled; v2 one per scope, v1 one per
  cgroup using it);
* ``statehold_volume_io_total{volume,op}`` and ``statehold_volume_io_bytes_total{volume,op}``:
  operations and bytes on the loop device by the pods' cgroups (the throttle's own
  counters; reset when the device number is reused).

Read at scrape time from the engine and the cgroup files; nothing is cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statehold.engine import qos
from statehold.engine.pool import Pool
from statehold.engine.throttle import Throttle
from statehold.errors import StateholdError


class QosCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[Pool]], throttle: Throttle,
                 overrides: qos.Overrides) -> None:
        self._pools, self._throttle, self._overrides = pools, throttle, overrides

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily("statehold_volume_limit", "Configured I/O limit of a volume "
                                  "(IOPS or bytes per second)", labels=["volume", "limit", "source"])
        rules = GaugeMetricFamily("statehold_volume_throttle_rules", "Throttle rules the kernel "
                                  "holds for the volume's loop device", labels=["volume"])
        ios = CounterMetricFamily("statehold_volume_io", "I/O operations on the volume's loop "
                                  "device by the pod cgroups", labels=["volume", "op"])
        done = CounterMetricFamily("statehold_volume_io_bytes", "Bytes read and written on the "
                                   "volume's loop device by the pod cgroups", labels=["volume", "op"])
        for pool in self._pools():
            try:
                volumes = pool.list_volumes()
            except StateholdError:
                continue
            for vol in volumes:
                wanted = qos.configured(vol, self._overrides)
                for field, value in wanted.limits.items():
                    if value:
                        limit.add_metric([vol.id, field, wanted.source], value)
                if vol.device is None:
                    continue
                try:
                    rules.add_metric([vol.id], len(self._throttle.applied(vol.device)))
                    count = self._throttle.counters(vol.device)
                except StateholdError:  # detached meanwhile
                    continue
                ios.add_metric([vol.id, "read"], count.read_ios)
                ios.add_metric([vol.id, "write"], count.write_ios)
                done.add_metric([vol.id, "read"], count.read_bytes)
                done.add_metric([vol.id, "write"], count.write_bytes)
        yield from (limit, rules, ios, done)
