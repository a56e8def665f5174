"""StoragePool: the agent of ``spec.node`` creates or imports the pool and reports capacity.

A decommissioned pool that is not on the node is left so (it was exported once retired,
``statehold.controller.retirement``): it is neither created nor imported again.

:func:`plan_pool` (pure) turns the spec into the engine call; :func:`reconcile_pool` acts on
the node's engine and reports. Deleting a StoragePool object never destroys the pool (its
disks keep the data and can be imported again); that is a deliberate, documented choice.

Space (engine/capacity.py): ``spec.thresholds`` become the pool's own warning and critical
marks; each reconcile reports ``status.usedPercent`` and ``status.spaceLevel``, the
condition ``SpacePressure`` (False below the warning mark; True with reason AboveWarning,
AboveCritical or Full) and, when the level changes, one Event (Warning on the way up,
Normal ``SpaceRecovered`` on the way back below the warning mark). Above the critical mark
the engine itself refuses new volumes, clones and snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from statehold.controller.conditions import find
from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem
from statehold.engine import capacity as fullness
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import PoolSpec, RaidProfile
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    StateholdError,
)
from statehold.kube.facade import Kube, Obj


@dataclass(frozen=True, slots=True)
class PoolPlan:
    action: Literal["create", "import"]
    spec: PoolSpec
    sources: tuple[str, ...]
    thresholds: fullness.Thresholds = field(default_factory=fullness.Thresholds)


def plan_pool(name: str, spec: dict[str, Any]) -> PoolPlan:
    """The engine call a (schema-valid, defaulted) StoragePool spec asks for."""
    try:
        if "devices" in spec:
            devices = tuple(spec["devices"])
            images: tuple[str, ...] = ()
            size = 0
        else:
            count = int(spec.get("imageCount", 1))
            images = tuple(str(Path(spec["directory"]) / f"{name}-{i}.img") for i in range(count))
            devices = ()
            size = parse_size(str(spec["imageSize"])) if "imageSize" in spec else 0
        pool_spec = PoolSpec(name=name, devices=devices, images=images, image_size=size,
                             profile=RaidProfile(spec.get("profile", "single")),
                             overprovision_ratio=float(spec.get("overprovisionRatio", 10)),
                             force=bool(spec.get("force", False)),
                             layout=str(spec.get("layout", "file")))
        marks = spec.get("thresholds") or {}
        thresholds = fullness.check_thresholds(
            marks.get("warningPercent", fullness.DEFAULT_WARNING),
            marks.get("criticalPercent", fullness.DEFAULT_CRITICAL))
    except (InvalidArgument, OutOfRange, ValueError, KeyError) as exc:
        raise Problem("InvalidSpec", f"StoragePool {name}: {exc}", permanent=True) from exc
    action: Literal["create", "import"] = "import" if spec.get("importExisting") else "create"
    return PoolPlan(action, pool_spec, devices or images, thresholds)


def drift(plan: PoolPlan, pool: Pool) -> str:
    """What of the spec the existing pool does not match (disks, profile and layout are
    fixed when a pool is made; only the over-provisioning ratio changes later). "" when it matches."""
    problems = []
    wanted = sorted(str(Path(s).absolute()) for s in plan.sources)
    if wanted != sorted(pool.sources):
        problems.append(f"disks are {sorted(pool.sources)}, the spec asks for {wanted}")
    if str(pool.profile) != str(plan.spec.profile):
        problems.append(f"profile is {pool.profile}, the spec asks for {plan.spec.profile}")
    if pool.layout.name != plan.spec.layout:
        problems.append(f"layout is {pool.layout.name}, the spec asks for {plan.spec.layout}")
    return "; ".join(problems)


def capacity_status(pool: Pool, space: fullness.Space | None = None) -> dict[str, Any]:
    """Status fields of the pool now. At or above its critical mark a pool takes no new
    volume, so ``allocatable`` is 0 there (the scheduler extender reads it as no room)."""
    space = space or pool.space()
    cap = space.capacity
    refusing = space.level.rank >= fullness.Level.CRITICAL.rank
    return {"capacity": cap.total, "allocated": cap.used, "provisioned": cap.provisioned,
            "free": cap.free, "allocatable": 0 if refusing else max(0, cap.allocatable),
            "volumes": len(pool.list_volumes()), "mountpoint": str(pool.mountpoint),
            "usedPercent": round(min(100.0, space.used_percent), 2),
            "spaceLevel": space.level.value}


PRESSURE = "SpacePressure"
PRESSURE_REASONS: dict[fullness.Level, str] = {
    fullness.Level.OK: "BelowWarning",
    fullness.Level.WARNING: "AboveWarning",
    fullness.Level.CRITICAL: "AboveCritical",
    fullness.Level.FULL: "Full",
}
EVENT_REASONS: dict[fullness.Level, str] = {
    fullness.Level.OK: "SpaceRecovered",
    fullness.Level.WARNING: "SpaceWarning",
    fullness.Level.CRITICAL: "SpaceCritical",
    fullness.Level.FULL: "PoolFull",
}


def pressure(space: fullness.Space) -> tuple[str, bool, str, str]:
    """The SpacePressure condition for the pool's level now (pure)."""
    message = space.describe()
    if space.level.rank >= fullness.Level.CRITICAL.rank:
        message += ("; new volumes, clones and snapshots are refused until it is below "
                    f"{space.thresholds.critical:g} % again; {fullness.REMEDY}")
    return (PRESSURE, space.level is not fullness.Level.OK, PRESSURE_REASONS[space.level],
            message)


def pressure_event(before: str | None, space: fullness.Space
                   ) -> tuple[Literal["Normal", "Warning"], str, str] | None:
    """The Event for a change of level (``before``: the condition's previous reason, None
    the first time), or None when nothing changed. A pool first seen at ok says nothing."""
    now = PRESSURE_REASONS[space.level]
    if before == now or (before is None and space.level is fullness.Level.OK):
        return None
    kind: Literal["Normal", "Warning"] = "Normal" if space.level is fullness.Level.OK else "Warning"
    return kind, EVENT_REASONS[space.level], pressure(space)[3]


def reconcile_pool(kube: Kube, obj: Obj, node: Node, node_name: str, now: Clock) -> Result:
    """Create/import the pool if this node does not have it yet; report capacity."""
    if obj["spec"].get("node") != node_name:
        return Result("skipped")
    rep = Reporter(kube, obj, now, component=f"statehold-agent/{node_name}")
    name = obj["metadata"]["name"]
    try:
        plan = plan_pool(name, obj["spec"])
        try:
            pool = node.pool(name)
            made = ""
        except NotFound:
            if obj["spec"].get("decommission"):
                # retired, then exported by the cluster operator (controller.retirement):
                # making or importing it again would undo the export
                rep.update({"phase": "Pending"}, condition=(
                    "Ready", False, "NotOnNode", f"the pool is not on {node_name} and is "
                    "decommissioned, so it is neither created nor imported (a retired pool "
                    "is exported); clear spec.decommission to bring it back"))
                return Result()
            if plan.action == "import":
                pool = node.import_pool(plan.sources, name=name)
                made = "Imported"
            else:
                pool = node.create_pool(plan.spec)
                made = "Created"
        if abs(pool.capacity().overprovision_ratio - plan.spec.overprovision_ratio) > 1e-9:
            pool.set_overprovision_ratio(plan.spec.overprovision_ratio)
        if pool.thresholds() != plan.thresholds:
            pool.set_thresholds(plan.thresholds.warning, plan.thresholds.critical)
        space = pool.space()
        fields = capacity_status(pool, space)
    except Problem as p:
        return report_problem(rep, p)
    except (InvalidArgument, AlreadyExists, FailedPrecondition, OutOfRange) as exc:
        return report_problem(rep, Problem(f"{type(exc).__name__}", str(exc), permanent=True))
    except StateholdError as exc:  # Unavailable, CommandError, Temporary: disks may come back
        return report_problem(rep, Problem("PoolUnavailable", str(exc), retry_after=30))
    rep.update({**fields, "phase": "Ready"},
               condition=("Ready", True, "PoolReady", f"pool mounted at {fields['mountpoint']}"))
    mismatch = drift(plan, pool)
    if mismatch:
        rep.update(condition=("SpecApplied", False, "SpecMismatch",
                              f"{mismatch}; a pool's disks and profile cannot change"))
        rep.event("Warning", "SpecMismatch", mismatch)
    else:
        rep.update(condition=("SpecApplied", True, "Applied", "the pool matches the spec"))
    if made:
        rep.event("Normal", made, f"{made.lower()} pool {name} on {node_name}: "
                  f"{fields['capacity']} bytes")
    before = find(rep.status.get("conditions"), PRESSURE)
    change = pressure_event(before["reason"] if before else None, space)
    rep.update(condition=pressure(space))
    if change is not None:
        rep.event(*change)
    return Result()
