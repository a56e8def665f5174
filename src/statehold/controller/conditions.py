"""status.conditions (metav1.Condition) as pure list operations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from statehold.kube.events import rfc3339

Condition = dict[str, Any]


def find(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(conditions: list[Condition] | None, type_: str, status: bool | str, reason: str,
                  message: str, *, now: datetime, generation: int | None = None) -> list[Condition]:
    """conditions with type_ set; lastTransitionTime moves only when the status changes."""
    st = status if isinstance(status, str) else ("True" if status else "False")
    old = find(conditions, type_)
    new: Condition = {"type": type_, "status": st, "reason": reason, "message": message[:32768],
                      "lastTransitionTime": rfc3339(now)}
    if old is not None and old.get("status") == st:
        new["lastTransitionTime"] = old["lastTransitionTime"]
    if generation is not None:
        new["observedGeneration"] = generation
    rest = [c for c in conditions or [] if c.get("type") != type_]
    return sorted([*rest, new], key=lambda c: str(c["type"]))


def is_true(obj: dict[str, Any], type_: str) -> bool:
    c = find((obj.get("status") or {}).get("conditions"), type_)
    return c is not None and c.get("status") == "True"
