"""Prometheus metrics of the extender, in a registry of its own (one per service, so
several services in one test process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ExtenderMetrics:
    def __init__(self, reservations: Callable[[], float], reserved_bytes: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "statehold_extender_requests", "Extender requests by verb and outcome",
            ["verb", "outcome"], registry=self.registry)
        self.latency = Histogram(
            "statehold_extender_request_seconds", "Time to answer one extender request",
            ["verb"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.fail_open = Counter(
            "statehold_extender_fail_open", "Filter calls answered 'all nodes pass' because "
            "of an internal error", registry=self.registry)
        self.reservation_endings = Counter(
            "statehold_extender_reservation_endings", "Reservations ended, by why",
            ["reason"], registry=self.registry)
        self.nodes_rejected = Counter(
            "statehold_extender_nodes_rejected", "Nodes filtered out", registry=self.registry)
        g = Gauge("statehold_extender_reservations", "Reservations held now",
                  registry=self.registry)
        g.set_function(reservations)
        b = Gauge("statehold_extender_reserved_bytes", "Bytes reserved now",
                  registry=self.registry)
        b.set_function(reserved_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
