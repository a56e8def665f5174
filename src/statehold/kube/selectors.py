"""Label selectors: the string form kubectl and the API accept, parsed and matched in Python.

Grammar (the API's): comma-separated requirements, each one of ``key``, ``!key``,
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``.
The in-memory facade matches with :func:`matches`; the real facade passes the string on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from statehold.errors import InvalidArgument

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin"


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def parse(selector: str | Mapping[str, str] | None) -> tuple[Requirement, ...]:
    """Parse a selector string (or an equality mapping); InvalidArgument on bad syntax."""
    if selector is None:
        return ()
    if isinstance(selector, Mapping):
        return tuple(Requirement(k, "=", frozenset({v})) for k, v in sorted(selector.items()))
    reqs = []
    for part in _split(selector):
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(4).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(3), values))
        elif m := _EQ.match(part):
            op = "=" if m.group(3) in ("=", "==") else "!="
            reqs.append(Requirement(m.group(1), op, frozenset({m.group(4)})))
        elif m := _EXISTS.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise InvalidArgument(f"bad label selector requirement {part.strip()!r}")
    return tuple(reqs)


def render(selector: str | Mapping[str, str] | None) -> str | None:
    """The string form of a selector (for the API's ``labelSelector`` query parameter)."""
    if selector is None or isinstance(selector, str):
        return selector or None
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None


def matches(selector: str | Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in parse(selector))


def from_label_selector(sel: Mapping[str, object] | None) -> str:
    """A metav1.LabelSelector object (matchLabels/matchExpressions) as a selector string."""
    if not sel:
        return ""
    parts = []
    match_labels = sel.get("matchLabels") or {}
    assert isinstance(match_labels, Mapping)
    parts += [f"{k}={v}" for k, v in sorted(match_labels.items())]
    for expr in sel.get("matchExpressions") or []:  # type: ignore[attr-defined]
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise InvalidArgument(f"bad label selector operator {op!r}")
    return ",".join(parts)
