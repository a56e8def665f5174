"""Prometheus metrics of the agent, in a registry of its own (several agents in one test
process never collide).

* ``statehold_replication_lag_seconds{volume,replica}``: age of the newest point the replica
  acknowledged, computed at scrape time (it grows between cycles, as the RPO it measures),
  for the replicas this node's primaries stream to now (a released replica, or a volume
  demoted here, drops out instead of ageing for ever);
* ``statehold_replication_rpo_seconds{volume}``: the volume's RPO as the controller gave it
  (``SetReplicas``), for the volumes streamed from here (beside their lag), so an alert
  compares each volume's lag with its own objective
  (``lag > on (job, instance, volume) group_left rpo``) instead of one chart-wide number;
* ``statehold_replication_sent_bytes_total{volume,replica}``: frame bytes streamed;
* ``statehold_replication_cycles_total{volume,replica,outcome}``: streams by ``ok``/``failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

Lags = Callable[[], Iterable[tuple[str, str, float]]]
"""(volume, replica node, lag seconds) for every replica with an acknowledged point."""
Rpos = Callable[[], Iterable[tuple[str, int]]]
"""(volume, RPO seconds) for every volume streamed from here whose RPO the controller gave."""


class _LagCollector(Collector):
    def __init__(self, lags: Lags, rpos: Rpos) -> None:
        self._lags = lags
        self._rpos = rpos

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("statehold_replication_lag_seconds",
                                   "Age of the newest point a replica acknowledged",
                                   labels=["volume", "replica"])
        for volume, replica, lag in self._lags():
            family.add_metric([volume, replica], lag)
        yield family
        objective = GaugeMetricFamily("statehold_replication_rpo_seconds",
                                      "Recovery point objective of a replicated volume",
                                      labels=["volume"])
        for volume, seconds in self._rpos():
            objective.add_metric([volume], seconds)
        yield objective


class AgentMetrics:
    def __init__(self, lags: Lags, rpos: Rpos = lambda: ()) -> None:
        self.registry = CollectorRegistry()
        self.sent_bytes = Counter("statehold_replication_sent_bytes", "Replication frame bytes streamed",
                                  ["volume", "replica"], registry=self.registry)
        self.cycles = Counter("statehold_replication_cycles", "Replication streams by outcome",
                              ["volume", "replica", "outcome"], registry=self.registry)
        self.registry.register(_LagCollector(lags, rpos))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
