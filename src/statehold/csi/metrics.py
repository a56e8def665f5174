"""Prometheus metrics of the CSI driver's calls, in a registry of its own (several drivers in
one test process never collide).

* ``statehold_csi_calls_total{method,code}``: finished calls by CSI method (``CreateVolume``,
  ``NodeStageVolume``, ...) and gRPC status code name (``OK``, ``NOT_FOUND``, ...);
* ``statehold_csi_call_seconds{method}``: a histogram of call durations.

Both label sets are bounded: the CSI spec has a few dozen methods and gRPC sixteen codes.
Counted by a server interceptor, so every servicer is covered without touching it.

:class:`ConditionCollector` reads the volume conditions this node wrote down
(``csi.conditions``: a filesystem found failed at unmount) at scrape time:

* ``statehold_pool_volumes_abnormal{pool}``: volumes of the pool whose condition is abnormal;
* ``statehold_volume_condition_abnormal{volume}``: 1 abnormal, 0 healthy (only with
  ``per_volume``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statehold.csi.conditions import Conditions
from statehold.engine.pool import Pool
from statehold.errors import StateholdError

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""CSI calls span milliseconds (probes) to a minute (mkfs of a large volume at NodeStage)."""


class CsiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("statehold_csi_calls", "CSI calls finished, by method and gRPC code",
                             ["method", "code"], registry=self.registry)
        self.latency = Histogram("statehold_csi_call_seconds", "Time to answer one CSI call",
                                 ["method"], registry=self.registry, buckets=BUCKETS)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.calls.labels(method=method, code=code.name).inc()
        self.latency.labels(method=method).observe(seconds)

    def interceptor(self) -> Any:
        return _Interceptor(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def method_name(full: str) -> str:
    """``/csi.v1.Controller/CreateVolume`` -> ``CreateVolume``."""
    return full.rsplit("/", 1)[-1] or full


class _Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs: Any
    def __init__(self, metrics: CsiMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # CSI is unary only
            return handler
        method = method_name(handler_call_details.method)
        behavior = handler.unary_unary
        metrics = self._metrics

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.monotonic()
            code: grpc.StatusCode | None = None
            try:
                response = behavior(request, context)
            except BaseException:
                # context.abort() raises after setting the code; anything else is UNKNOWN,
                # as grpc answers it
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            else:
                code = context.code() or grpc.StatusCode.OK
                return response
            finally:
                metrics.observe(method, code or grpc.StatusCode.UNKNOWN, time.monotonic() - start)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class ConditionCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[Pool]], home: Path, *,
                 per_volume: bool = True) -> None:
        self._pools, self._conditions, self.per_volume = pools, Conditions(home), per_volume

    def collect(self) -> Iterator[Metric]:
        counts = GaugeMetricFamily("statehold_pool_volumes_abnormal", "Volumes of the pool whose "
                                   "condition is abnormal (filesystem failed)", labels=["pool"])
        each = GaugeMetricFamily("statehold_volume_condition_abnormal", "1 when the volume's "
                                 "condition is abnormal (filesystem failed), else 0", labels=["volume"])
        for pool in self._pools():
            try:
                volumes = pool.list_volumes()
            except StateholdError:
                continue
            bad = 0
            for vol in volumes:
                abnormal = self._conditions.get(vol) is not None
                bad += abnormal
                if self.per_volume:
                    each.add_metric([vol.id], 1.0 if abnormal else 0.0)
            counts.add_metric([pool.name], bad)
        yield counts
        if self.per_volume:
            yield each
