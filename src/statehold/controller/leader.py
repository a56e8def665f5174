"""Leader election on a coordination.k8s.io/v1 Lease, through the facade.

The decision is pure (:func:`decide`); :class:`LeaderElector` acts on it with the facade's
optimistic concurrency: a write with a stale resourceVersion is a 409 (Aborted) and means
someone else moved first, so we lost this round. Two candidates can never both win.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from statehold.controller.report import Clock
from statehold.errors import Aborted, AlreadyExists, NotFound
from statehold.kube.facade import Kube
from statehold.kube.kinds import LEASE

MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"
Decision = Literal["create", "renew", "acquire", "wait"]


def micro(t: datetime) -> str:
    return t.strftime(MICRO)


def parse_micro(text: str | None) -> datetime | None:
    if not text:
        return None
    from datetime import UTC

    for fmt in (MICRO, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def decide(spec: dict[str, Any] | None, me: str, now: datetime) -> Decision:
    """What a candidate does with the lease it just read (None: no lease yet)."""
    if spec is None:
        return "create"
    holder = spec.get("holderIdentity") or ""
    if holder == me:
        return "renew"
    renewed = parse_micro(spec.get("renewTime"))
    duration = int(spec.get("leaseDurationSeconds") or 15)
    if not holder or renewed is None or renewed + timedelta(seconds=duration) < now:
        return "acquire"
    return "wait"


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, now: Clock, *,
                 duration: int = 15) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity, self.now, self.duration = identity, now, duration

    def try_acquire(self) -> bool:
        """One round: True while we hold the lease (acquired or renewed now)."""
        t = self.now()
        try:
            lease: dict[str, Any] | None = self.kube.get(LEASE, self.name, self.namespace)
        except NotFound:
            lease = None
        action = decide(None if lease is None else lease.get("spec") or {}, self.identity, t)
        if action == "wait":
            return False
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "renewTime": micro(t)}
        try:
            if lease is None:
                self.kube.create({"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                                  "metadata": {"name": self.name, "namespace": self.namespace},
                                  "spec": {**spec, "acquireTime": micro(t),
                                           "leaseTransitions": 0}})
                return True
            old = lease.get("spec") or {}
            if action == "acquire":
                spec.update(acquireTime=micro(t),
                            leaseTransitions=int(old.get("leaseTransitions") or 0) + 1)
            lease["spec"] = {**old, **spec}
            self.kube.replace(lease)
            return True
        except (Aborted, AlreadyExists):
            return False

    def release(self) -> None:
        """Give the lease up (on clean shutdown) so another replica takes over at once."""
        try:
            lease = self.kube.get(LEASE, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.kube.replace(lease)
        except (NotFound, Aborted):
            pass
