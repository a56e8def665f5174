"""BackupTarget (cluster operator): are the Secrets there? Ready condition + Events."""

from __future__ import annotations

from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter
from statehold.controller.targets import target_from
from statehold.kube.facade import Kube, Obj


def reconcile_target(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    try:
        cfg = target_from(kube, obj)
    except Problem as p:
        rep.update({"phase": "Failed" if p.permanent else "Pending"},
                   condition=("Ready", False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return Result.failed(p.message) if p.permanent else Result.retry(p.message, p.retry_after)
    was_ready = rep.status.get("phase") == "Ready"
    rep.update({"phase": "Ready", "repository": cfg.describe()},
               condition=("Ready", True, "SecretsFound", f"credentials for {cfg.describe()}"))
    if not was_ready:
        rep.event("Normal", "Ready", f"backup target {cfg.describe()} is configured")
    return Result()
