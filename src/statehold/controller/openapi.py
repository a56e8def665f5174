"""Small builders for structural OpenAPI v3 schemas (the form CRDs require).

Every node has a ``type`` (int-or-string quantities excepted, as the rules allow); rules a
schema cannot express are CEL ``x-kubernetes-validations`` (each one has a Python twin in
:mod:`statehold.controller.cel_rules`).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmgtpe])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def obj(props: dict[str, Schema], *, required: tuple[str, ...] = (), desc: str = "",
        rules: tuple[tuple[str, str], ...] = (), **extra: Any) -> Schema:
    s: Schema = {"type": "object", "properties": props}
    if desc:
        s["description"] = desc
    if required:
        s["required"] = list(required)
    if rules:
        s["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    s.update(extra)
    return s


def string(desc: str = "", **kw: Any) -> Schema:
    return {"type": "string", **({"description": desc} if desc else {}), **kw}


def name_ref(desc: str) -> Schema:
    """The name of an object in the same namespace (DNS-1123 subdomain)."""
    return string(desc, minLength=1, maxLength=253, pattern=DNS_SUBDOMAIN)


def integer(desc: str = "", **kw: Any) -> Schema:
    return {"type": "integer", "format": "int64", **({"description": desc} if desc else {}), **kw}


def number(desc: str = "", **kw: Any) -> Schema:
    return {"type": "number", **({"description": desc} if desc else {}), **kw}


def boolean(desc: str = "", default: bool | None = None) -> Schema:
    s: Schema = {"type": "boolean", **({"description": desc} if desc else {})}
    if default is not None:
        s["default"] = default
    return s


def array(items: Schema, desc: str = "", **kw: Any) -> Schema:
    return {"type": "array", "items": items, **({"description": desc} if desc else {}), **kw}


INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
"""The only ``anyOf`` a structural schema allows to carry ``type``s, and only exactly so."""


def quantity(desc: str) -> Schema:
    """A resource quantity ("10Gi", "512M" or a byte count).

    The checks sit on the property, beside ``x-kubernetes-int-or-string``, not inside the
    ``anyOf``: an API server accepts a typed ``anyOf`` only as exactly ``[{type: integer},
    {type: string}]`` ("anyOf[0].type: Forbidden: must be empty to be structural"
    otherwise). Each check applies to its own JSON type only (``minimum`` to numbers,
    ``pattern``/``maxLength`` to strings), so ``0`` and ``"20 gigs"`` are still refused."""
    return {"description": desc, "x-kubernetes-int-or-string": True,
            "anyOf": [dict(t) for t in INT_OR_STRING],
            "minimum": 1, "pattern": QUANTITY_PATTERN, "maxLength": 64}


def immutable(s: Schema, what: str) -> Schema:
    s = dict(s)
    s.setdefault("x-kubernetes-validations", []).append(
        {"rule": "self == oldSelf", "message": f"{what} is immutable"})
    return s


def secret_key_ref(desc: str, default_key: str) -> Schema:
    return obj({
        "name": name_ref("Name of the Secret (same namespace)."),
        "key": string(f"Key inside the Secret (default {default_key}).", default=default_key,
                      minLength=1),
    }, required=("name",), desc=desc)


def label_selector(desc: str) -> Schema:
    """metav1.LabelSelector."""
    s = obj({
        "matchLabels": {"type": "object", "maxProperties": 64,
                        "additionalProperties": {"type": "string", "maxLength": 63}},
        # bounded, so the API server's CEL cost estimate for the rules below stays small
        "matchExpressions": array(obj({
            "key": string(minLength=1, maxLength=317),
            "operator": string(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
            "values": array(string(maxLength=63), maxItems=64),
        }, required=("key", "operator")), maxItems=32),
    }, desc=desc)
    s["x-kubernetes-map-type"] = "atomic"
    return s


CONDITIONS: Schema = array(obj({
    "type": string("Condition type, e.g. Ready.", maxLength=316),
    "status": string(enum=["True", "False", "Unknown"]),
    "reason": string("CamelCase reason.", maxLength=1024),
    "message": string(maxLength=32768),
    "lastTransitionTime": string(format="date-time"),
    "observedGeneration": integer(minimum=0),
}, required=("type", "status", "lastTransitionTime")),
    "Observations of the object's state (Ready, and the step conditions).",
    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


def status(props: dict[str, Schema]) -> Schema:
    return obj({**props, "observedGeneration": integer(minimum=0), "conditions": CONDITIONS})


def column(name: str, path: str, type_: str = "string", *, priority: int = 0,
           desc: str = "") -> Schema:
    c: Schema = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        c["priority"] = priority
    if desc:
        c["description"] = desc
    return c


AGE = column("Age", ".metadata.creationTimestamp", "date")
READY = column("Ready", '.status.conditions[?(@.type=="Ready")].status')
REASON = column("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1)
