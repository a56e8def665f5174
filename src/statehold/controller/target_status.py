"""BackupTarget (cluster operator): are the Secrets there, and for S3 targets, does the
repository open with them? Ready condition + Events. Then the gc schedule
(:mod:`statehold.controller.target_gc`).

Directory targets live on the nodes (the same path on each), which the operator's pod does
not mount: those are checked by the agents at backup time.
"""

from __future__ import annotations

from statehold.controller import backup_runner, target_gc
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter
from statehold.controller.targets import TargetConfig, target_from
from statehold.errors import Corrupt, FailedPrecondition, PermissionDenied, StateholdError
from statehold.kube.facade import Kube, Obj


def check_repository(cfg: TargetConfig) -> str:
    """A message for the Ready condition, or a Problem."""
    if cfg.kind != "s3":
        return f"credentials for {cfg.describe()} (the directory is checked on the nodes)"
    try:
        state = backup_runner.probe(cfg)
    except PermissionDenied as exc:
        raise Problem("AccessDenied", f"{cfg.describe()}: {exc}", retry_after=300) from exc
    except (Corrupt, FailedPrecondition) as exc:
        raise Problem("RepositoryUnusable", f"{cfg.describe()}: {exc}", permanent=True) from exc
    except StateholdError as exc:  # Unavailable, Temporary
        raise Problem("Unreachable", f"{cfg.describe()}: {exc}", retry_after=60) from exc
    if state == "missing":
        return f"{cfg.describe()} reachable; the first backup creates the repository"
    return f"repository at {cfg.describe()} opens with this password"


def reconcile_target(kube: Kube, obj: Obj, now: Clock) -> Result:
    rep = Reporter(kube, obj, now)
    try:
        cfg = target_from(kube, obj)
        message = check_repository(cfg)
    except Problem as p:
        rep.update({"phase": "Failed" if p.permanent else "Pending"},
                   condition=("Ready", False, p.reason, p.message))
        rep.event("Warning", p.reason, p.message)
        return Result.failed(p.message) if p.permanent else Result.retry(p.message, p.retry_after)
    was_ready = rep.status.get("phase") == "Ready"
    rep.update({"phase": "Ready", "repository": cfg.describe()},
               condition=("Ready", True, "Checked", message))
    if not was_ready:
        rep.event("Normal", "Ready", message)
    target_gc.schedule_gc(kube, rep)
    return Result()
