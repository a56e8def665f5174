"""Writing what a handler found: status (phase, fields, conditions) and an Event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from statehold.controller.conditions import set_condition
from statehold.controller.problems import Problem, Result
from statehold.kube.events import rfc3339
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import kind_of

Clock = Callable[[], datetime]
COMPONENT = "statehold-operator"


class Reporter:
    """Patches one object's status and records Events about it."""

    def __init__(self, kube: Kube, obj: Obj, now: Clock, component: str = COMPONENT) -> None:
        self.kube, self.obj, self.now, self.component = kube, obj, now, component
        self.kind = kind_of(obj)
        self.name = obj["metadata"]["name"]
        self.namespace = obj["metadata"].get("namespace")

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    def update(self, fields: dict[str, Any] | None = None, *,
               condition: tuple[str, bool | str, str, str] | None = None) -> Obj:
        """Merge fields into status and set one condition (type, status, reason, message)."""
        patch: dict[str, Any] = dict(fields or {})
        if condition is not None:
            type_, st, reason, message = condition
            patch["conditions"] = set_condition(
                self.status.get("conditions"), type_, st, reason, message, now=self.now(),
                generation=self.obj["metadata"].get("generation"))
        patch.setdefault("observedGeneration", self.obj["metadata"].get("generation", 1))
        self.obj = self.kube.patch_status(self.kind, self.name, patch, self.namespace)
        return self.obj

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.kube.record_event(self.obj, type=type_, reason=reason, message=message,
                               component=self.component)


def report_problem(rep: Reporter, p: Problem, *, condition: str = "Ready",
                   failed_phase: str = "Failed", pending_phase: str = "Pending") -> Result:
    """A Problem -> condition + Warning Event (+ phase); permanent ones end the object."""
    rep.update({"phase": failed_phase if p.permanent else pending_phase},
               condition=(condition, False, p.reason, p.message))
    rep.event("Warning", p.reason, p.message)
    return Result.failed(p.message) if p.permanent else Result.retry(p.message, p.retry_after)


def report_restored(rep: Reporter, spec: dict[str, Any], pv_name: str, handle: str) -> Result:
    """A VolumeRestore is done: its PVC is bound to the restored volume (block or shared)."""
    claim = spec["persistentVolumeClaimName"]
    rep.update({"phase": "Completed", "persistentVolumeName": pv_name,
                "completionTime": rfc3339(rep.now())},
               condition=("Ready", True, "Completed", f"PVC {claim} is bound to {handle}"))
    rep.event("Normal", "Completed", f"PVC {claim} created from backup {spec['backup']}")
    return Result()
