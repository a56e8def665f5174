"""The reservation ledger: capacity promised to pods that are scheduled but not provisioned.

Why it exists: a StoragePool's status only changes after a volume is created, seconds
after the scheduler placed the pod. Without the ledger, every pod of a burst sees the same
free space and they all land on the same pool (TopoLVM's documented over-commit).

When a reservation is made (see ``docs/scheduling.md``): the extender is never told which
node the scheduler finally picks, so it reserves on the node it ranks first — at filter
time, then again at prioritize time over the nodes that survived every filter. The
scheduler's next pod is filtered only after this one's scheduling cycle ended, so the
next pod already sees the reservation. When the scheduler chose another node, the claim's
``volume.kubernetes.io/selected-node`` annotation (written at the start of binding) says
so and :meth:`Ledger.sweep` moves the reservation there.

When it ends: ``settle`` seconds after every claim is bound (by then the pool's status
counts the volume — the operator refreshes StoragePool capacity every 60 s, hence the
75 s default; keeping the reservation a little longer only errs on the safe side),
when a claim disappears, when the pod is filtered again (the new one replaces it), or
``ttl`` seconds after it was made (the pod never got scheduled).

Thread-safe. The clock is injected so tests move time without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from statehold.scheduler.core import ClaimKey, Placement, PoolKey
from statehold.scheduler.view import ClaimInfo, ClusterView


@dataclass(frozen=True, slots=True)
class Reservation:
    pod: str
    """The pod's ledger key (its UID)."""
    pod_name: str
    node: str
    placement: Placement
    claims: tuple[ClaimKey, ...]
    expires: float
    provisioned_at: float | None = None

    @property
    def size(self) -> int:
        return sum(n for _, n in self.placement)


class Ending(Enum):
    EXPIRED = "expired"
    PROVISIONED = "provisioned"
    CLAIM_GONE = "claim_gone"
    MOVED = "moved"


Relocate = Callable[[Reservation, str], Placement]
"""Compute the placement of a reservation on another node (the one really chosen)."""


class Ledger:
    def __init__(self, *, ttl: float = 180.0, settle: float = 75.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.settle = settle
        self._clock = clock
        self._lock = threading.RLock()
        self._by_pod: dict[str, Reservation] = {}

    def reserve(self, pod: str, pod_name: str, node: str, placement: Placement,
                claims: tuple[ClaimKey, ...]) -> Reservation:
        """Reserve placement on node for pod, replacing the pod's previous reservation."""
        r = Reservation(pod, pod_name, node, placement, claims, self._clock() + self.ttl)
        with self._lock:
            self._by_pod[pod] = r
        return r

    def release(self, pod: str) -> Reservation | None:
        with self._lock:
            return self._by_pod.pop(pod, None)

    def get(self, pod: str) -> Reservation | None:
        with self._lock:
            return self._by_pod.get(pod)

    def all(self) -> tuple[Reservation, ...]:
        with self._lock:
            return tuple(self._by_pod.values())

    def reserved(self, exclude: str | None = None) -> dict[PoolKey, int]:
        """Bytes reserved per (node, pool), leaving out pod ``exclude``'s own reservation."""
        out: dict[PoolKey, int] = {}
        with self._lock:
            for r in self._by_pod.values():
                if r.pod == exclude:
                    continue
                for pool, n in r.placement:
                    out[(r.node, pool)] = out.get((r.node, pool), 0) + n
        return out

    def total(self) -> int:
        with self._lock:
            return sum(r.size for r in self._by_pod.values())

    def sweep(self, view: ClusterView | None = None,
              relocate: Relocate | None = None) -> list[tuple[Reservation, Ending]]:
        """End what is due and follow the scheduler's real choice; returns what changed.

        Without a view only expiry is checked (cheap: no lookups).
        """
        now = self._clock()
        changes: list[tuple[Reservation, Ending]] = []
        with self._lock:
            known: Mapping[tuple[str, str], ClaimInfo] | None = None
            if view is not None and self._by_pod:
                known = view.claims({(c.namespace, c.name)
                                     for r in self._by_pod.values() for c in r.claims})
            for r in list(self._by_pod.values()):
                ending = self._check(r, now, known, relocate)
                if ending is not None:
                    changes.append((r, ending))
        return changes

    def _check(self, r: Reservation, now: float,
               known: Mapping[tuple[str, str], ClaimInfo] | None,
               relocate: Relocate | None) -> Ending | None:
        if r.provisioned_at is not None:  # settling: the ttl no longer applies
            if now >= r.provisioned_at + self.settle:
                del self._by_pod[r.pod]
                return Ending.PROVISIONED
            return None
        if now >= r.expires:
            del self._by_pod[r.pod]
            return Ending.EXPIRED
        if known is None:
            return None
        infos = [known.get((c.namespace, c.name)) for c in r.claims]
        if any(i is None for i in infos):
            del self._by_pod[r.pod]
            return Ending.CLAIM_GONE
        if all(i is not None and i.volume_name for i in infos):
            if r.provisioned_at is None:
                self._by_pod[r.pod] = replace(r, provisioned_at=now)
                if self.settle <= 0:
                    del self._by_pod[r.pod]
                    return Ending.PROVISIONED
            return None
        chosen = {i.selected_node for i in infos if i is not None and i.selected_node}
        if len(chosen) == 1 and r.node not in chosen and relocate is not None:
            node = chosen.pop()
            placement = relocate(r, node)
            self._by_pod[r.pod] = replace(r, node=node, placement=placement,
                                          expires=now + self.ttl)
            return Ending.MOVED
        return None
