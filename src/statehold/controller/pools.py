"""StoragePool: the agent of ``spec.node`` creates or imports the pool and reports capacity.

A decommissioned pool that is not on the node is left so (it was exported once retired,
``statehold.controller.retirement``): it is neither created nor imported again.

:func:`plan_pool` (pure) turns the spec into the engine call; :func:`reconcile_pool` acts on
the node's engine and reports. Deleting a StoragePool object never destroys the pool (its
disks keep the data and can be imported again); that is a deliberate, documented choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from statehold.controller.problems import Problem, Result
from statehold.controller.report import Clock, Reporter, report_problem
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
                             force=bool(spec.get("force", False)))
    except (InvalidArgument, OutOfRange, ValueError, KeyError) as exc:
        raise Problem("InvalidSpec", f"StoragePool {name}: {exc}", permanent=True) from exc
    action: Literal["create", "import"] = "import" if spec.get("importExisting") else "create"
    return PoolPlan(action, pool_spec, devices or images)


def drift(plan: PoolPlan, pool: Pool) -> str:
    """What of the spec the existing pool does not match (disks and profile are fixed when
    a pool is made; only the over-provisioning ratio changes later). "" when it matches."""
    problems = []
    wanted = sorted(str(Path(s).absolute()) for s in plan.sources)
    if wanted != sorted(pool.sources):
        problems.append(f"disks are {sorted(pool.sources)}, the spec asks for {wanted}")
    if str(pool.profile) != str(plan.spec.profile):
        problems.append(f"profile is {pool.profile}, the spec asks for {plan.spec.profile}")
    return "; ".join(problems)


def capacity_status(pool: Pool) -> dict[str, Any]:
    cap = pool.capacity()
    return {"capacity": cap.total, "allocated": cap.used, "provisioned": cap.provisioned,
            "free": cap.free, "allocatable": max(0, cap.allocatable),
            "volumes": len(pool.list_volumes()), "mountpoint": str(pool.mountpoint)}


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
        fields = capacity_status(pool)
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
    return Result()
