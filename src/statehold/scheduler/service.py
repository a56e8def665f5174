"""The extender service: request bytes in, answer out; decisions from the pure core.

It never raises and never answers 500. Bad input gets a well-formed answer carrying the
reason. An internal fault (the cluster view unreachable, a bug) makes the filter pass
every node — fail open, so an extender fault never blocks a cluster — unless
``fail_open`` is off, when the answer carries the error and the scheduler retries the pod.
Prioritize faults score every node 0 (neutral), which the scheduler ignores anyway.

Decisions and reservations happen under one lock: two pods filtered at once (a scheduler
with several profiles, or a restarted scheduler) still see each other's reservation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from statehold.errors import InvalidArgument
from statehold.scheduler import wire
from statehold.scheduler.claims import ClaimPolicy, resolve
from statehold.scheduler.core import (
    NodeScore,
    NodeVerdict,
    Placement,
    PodVolumes,
    PoolKey,
    PoolState,
    best_node,
    best_verdict,
    filter_nodes,
    judge_node,
    preferred_scores,
    score_nodes,
    score_verdict,
    unique_top,
)
from statehold.scheduler.ledger import Ledger, Reservation
from statehold.scheduler.metrics import ExtenderMetrics
from statehold.scheduler.view import ClusterView

log = logging.getLogger(__name__)

Answer = tuple[int, Any]
"""(HTTP status, JSON-able body)."""


@dataclass(frozen=True, slots=True)
class ExtenderConfig:
    fail_open: bool = True
    """On an internal error let every node pass (True) or answer with Error (False)."""
    claims: ClaimPolicy = field(default_factory=ClaimPolicy)
    sweep_interval: float = 1.0
    """Seconds between reconciliations of the ledger with the claims (each costs one
    claim lookup per reserved claim); expiry is checked on every request."""


class Extender:
    def __init__(self, view: ClusterView, *, ledger: Ledger | None = None,
                 config: ExtenderConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.ledger = ledger if ledger is not None else Ledger(clock=clock)
        self.config = config or ExtenderConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sweep = float("-inf")
        self._last: _Judged | None = None
        self.metrics = ExtenderMetrics(lambda: len(self.ledger.all()),
                                       lambda: self.ledger.total())

    # -- verbs ---------------------------------------------------------------------
    def filter(self, body: bytes) -> Answer:
        with self.metrics.latency.labels("filter").time():
            try:
                args = wire.decode_args(wire.loads(body))
            except InvalidArgument as exc:
                self.metrics.requests.labels("filter", "bad_request").inc()
                return 200, wire.filter_result(None, [], error=f"statehold: {exc}")
            try:
                return 200, self._filter(args)
            except Exception as exc:
                return 200, self._filter_fault(args, exc)

    def prioritize(self, body: bytes) -> Answer:
        with self.metrics.latency.labels("prioritize").time():
            try:
                args = wire.decode_args(wire.loads(body))
            except InvalidArgument as exc:
                self.metrics.requests.labels("prioritize", "bad_request").inc()
                return 400, {"Error": f"statehold: {exc}"}
            try:
                return 200, wire.priority_list(self._prioritize(args))
            except Exception as exc:
                log.exception("event=prioritize_error pod=%s error=%r", args.pod, exc)
                self.metrics.requests.labels("prioritize", "error").inc()
                return 200, wire.priority_list([NodeScore(n, 0, 0) for n in args.node_names])

    # -- decisions -------------------------------------------------------------------
    def _filter(self, args: wire.ExtenderArgs) -> dict[str, Any]:
        with self._lock:
            self._sweep()
            pod = resolve(args.pod, self.view, self.config.claims)
            if not pod.concerns_us:
                self.metrics.requests.labels("filter", "untouched").inc()
                return wire.filter_result(args, args.node_names)
            pools = self.view.pools()
            reserved = self.ledger.reserved(exclude=args.pod.key)
            out = filter_nodes(pod, args.node_names, pools, reserved)
            self._last = _Judged(args.pod.key, pod, pools, reserved, out.verdicts)
            if pod.needs_capacity:
                best = best_verdict(pod, out.verdicts, out.passed)
                self._reserve(args.pod, pod, best,
                              out.verdicts[best].placement if best is not None else ())
        self.metrics.requests.labels("filter", "ok").inc()
        self.metrics.nodes_rejected.inc(len(out.unresolvable))
        log.debug("event=filter pod=%s passed=%d rejected=%d", args.pod, len(out.passed),
                  len(out.unresolvable))
        return wire.filter_result(args, out.passed, unresolvable=out.unresolvable)

    def _filter_fault(self, args: wire.ExtenderArgs, exc: Exception) -> dict[str, Any]:
        log.exception("event=filter_error pod=%s fail_open=%s error=%r", args.pod,
                      self.config.fail_open, exc)
        self.metrics.requests.labels("filter", "error").inc()
        if self.config.fail_open:
            self.metrics.fail_open.inc()
            return wire.filter_result(args, args.node_names)
        return wire.filter_result(args, [], error=f"statehold extender internal error: {exc}")

    def _prioritize(self, args: wire.ExtenderArgs) -> Sequence[NodeScore]:
        with self._lock:
            pod = resolve(args.pod, self.view, self.config.claims)
            if not pod.concerns_us:
                scores = score_nodes(pod, args.node_names, {}, {})
            else:
                pools = self.view.pools()
                reserved = self.ledger.reserved(exclude=args.pod.key)
                scores = self._scores(args, pod, pools, reserved)
                if pod.needs_capacity:
                    best = best_node(scores)
                    scores = unique_top(scores, best)
                    placement = () if best is None else judge_node(
                        pod, best, pools.get(best), reserved).placement
                    self._reserve(args.pod, pod, best, placement)
        self.metrics.requests.labels("prioritize", "ok").inc()
        return scores

    def _scores(self, args: wire.ExtenderArgs, pod: PodVolumes,
                pools: Mapping[str, Sequence[PoolState]],
                reserved: dict[PoolKey, int]) -> tuple[NodeScore, ...]:
        """Scores from the verdicts of this pod's filter call when nothing changed since
        (the usual filter → prioritize sequence), else judged afresh."""
        last = self._last
        if (last is None or last.pod_key != args.pod.key or last.pod != pod
                or last.pools is not pools or last.reserved != reserved
                or not all(n in last.verdicts for n in args.node_names)):
            return score_nodes(pod, args.node_names, pools, reserved)
        preferred = preferred_scores(pod)
        verdicts = last.verdicts
        return tuple(score_verdict(pod, verdicts[n], preferred) for n in args.node_names)

    def _reserve(self, ref: wire.PodRef, pod: PodVolumes, node: str | None,
                 placement: Placement) -> None:
        if node is None:
            if self.ledger.release(ref.key) is not None:
                log.info("event=reservation_released pod=%s why=no_node_fits", ref)
            return
        claims = tuple(c.claim for c in pod.pending if c.selected_node is None)
        r = self.ledger.reserve(ref.key, str(ref), node, placement, claims)
        log.info("event=reserved pod=%s node=%s bytes=%d", ref, node, r.size)

    def _sweep(self) -> None:
        now = self._clock()
        view = None
        if now - self._last_sweep >= self.config.sweep_interval:
            view, self._last_sweep = self.view, now
        for r, ending in self.ledger.sweep(view, self._relocate):
            self.metrics.reservation_endings.labels(ending.value).inc()
            log.info("event=reservation_%s pod=%s node=%s bytes=%d", ending.value,
                     r.pod_name, r.node, r.size)

    def _relocate(self, r: Reservation, node: str) -> Placement:
        """The scheduler put the pod on node, not where we reserved: carry the same bytes
        there, in the same pools when the node has them, else in its roomiest pool."""
        pools = self.view.pools().get(node, ())
        names = {p.name for p in pools}
        if pools and all(name in names for name, _ in r.placement):
            return r.placement
        if pools:
            roomiest = max(pools, key=lambda p: (p.free(), p.name))
            return ((roomiest.name, r.size),)
        return (("", r.size),)


@dataclass(frozen=True, slots=True)
class _Judged:
    """The verdicts of the last filter call and the state they were made from."""

    pod_key: str
    pod: PodVolumes
    pools: Mapping[str, Sequence[PoolState]]
    reserved: dict[PoolKey, int]
    verdicts: Mapping[str, NodeVerdict]
