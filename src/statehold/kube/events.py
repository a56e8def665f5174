"""Building core/v1 Events, shared by both facade implementations.

An Event's name is derived from (involved uid, reason, message), so recording the same
event again bumps ``count`` and ``lastTimestamp`` instead of piling up copies: handlers
retry, and a retried step must not flood ``kubectl describe``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

from statehold.errors import AlreadyExists
from statehold.kube.kinds import EVENT, kind_of

if TYPE_CHECKING:
    from statehold.kube.facade import Kube


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def involved_ref(involved: dict[str, Any]) -> dict[str, Any]:
    meta = involved.get("metadata", {})
    ref = {
        "apiVersion": involved["apiVersion"],
        "kind": involved["kind"],
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


def event_namespace(involved: dict[str, Any]) -> str:
    ns: str = involved.get("metadata", {}).get("namespace") or ""
    if not ns or not kind_of(involved).namespaced:
        return "default"
    return ns


def build_event(involved: dict[str, Any], *, type: str, reason: str, message: str,
                component: str, now: datetime) -> dict[str, Any]:
    ref = involved_ref(involved)
    digest = hashlib.sha1(f"{ref['uid']}/{ref['name']}/{reason}/{message}".encode()).hexdigest()
    ts = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref['name']}.{digest[:16]}", "namespace": event_namespace(involved)},
        "involvedObject": ref,
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }


def create_or_count(kube: Kube, ev: dict[str, Any]) -> dict[str, Any]:
    """Store a built Event; the same Event again (same name: same object, reason and
    message) bumps its count and lastTimestamp, as kubectl's event aggregation expects."""
    meta = ev["metadata"]
    try:
        return kube.create(ev)
    except AlreadyExists:
        old = kube.get(EVENT, meta["name"], meta["namespace"])
        return kube.patch(EVENT, meta["name"], {
            "count": int(old.get("count", 1)) + 1,
            "lastTimestamp": ev["lastTimestamp"]}, meta["namespace"])
