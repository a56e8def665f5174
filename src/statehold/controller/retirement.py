"""Retiring StoragePools (docs/design/replication.md §9.7): the ``Retiring`` condition of
each decommissioned pool, and its export once nothing is left in it.

The reconciler of replicated volumes re-places every copy in a retiring pool
(:func:`~statehold.controller.replication_policy.plan_copies`); this module reads what
those plans left and says where each pool stands:

=====================================================  =====================================
what is left in the pool                               ``Retiring`` condition
=====================================================  =====================================
a copy that cannot be re-placed (no room elsewhere)    False, ``InsufficientCapacity``
copies of replicated volumes                           True, ``InProgress`` (which volumes)
single-copy volumes (PVs whose handle names the pool)  True, ``ExportBlocked`` (which ones)
nothing, first seen so                                 True, ``Retired``
nothing, seen before                                   ``ExportPool`` on the node's agent:
                                                       True, ``Exported`` or ``ExportFailed``
=====================================================  =====================================

``Retired`` is said for one pass before the export, so the moment no copy is left is
visible (and an export never races the pass that released the last copy). Single-copy
volumes are not moved by retirement: they block the export until they are backed up and
restored elsewhere, or deleted. The agent checks again on the node (a volume the cluster
does not know of, a snapshot, a pool another process keeps busy: ``ExportFailed`` with its
reason, retried at every pass). ``Exported`` is final: the agent is not called again, and
the node's operator no longer creates or imports a decommissioned pool that is not there
(``statehold.controller.pools``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from statehold.controller.conditions import set_condition
from statehold.controller.locate import is_statehold_pv
from statehold.controller.replicas import Agents
from statehold.controller.replication_policy import CopyPlan
from statehold.controller.replication_records import ClusterFacts, replicas_of
from statehold.errors import NotFound, StateholdError
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PV, STORAGE_POOL

log = logging.getLogger("statehold.operator.replication")
COMPONENT = "statehold-operator"
EXPORT_DUE = ("Retired", "ExportFailed", "ExportBlocked")
"""Reasons after which the next pass with nothing left in the pool exports it."""

Condition = tuple[str, bool, str, str]


def single_copy_volumes(pvs: list[Obj], pool: str) -> list[str]:
    """PVs of our driver with one copy whose volume lives in ``pool`` (the handle names
    it: ``<pool>/<volume>``). A replicated volume's handle keeps the pool it was made in
    after its copies moved away, so only its copies count (the plans)."""
    out = []
    for pv in pvs:
        csi = (pv.get("spec") or {}).get("csi") or {}
        handle = str(csi.get("volumeHandle") or "")
        if is_statehold_pv(pv) and handle.split("/", 1)[0] == pool and replicas_of(pv) <= 1:
            out.append(str(pv["metadata"]["name"]))
    return sorted(out)


def pool_condition(node: str, pool: str, plans: Mapping[str, CopyPlan], pvs: list[Obj],
                   previous: str | None) -> Condition | None:
    """Where the decommissioned ``pool`` of ``node`` stands, from what the volumes' plans
    left and the PVs; None when it is due for export (the caller asks the agent)."""
    refused = [f"{name}: {p.refuse.message}" for name, p in sorted(plans.items())
               if p.refuse is not None and node in p.retiring]
    left = sorted(name for name, p in plans.items() if node in p.retiring)
    if refused:
        return ("Retiring", False, "InsufficientCapacity", "; ".join(refused))
    if left:
        return ("Retiring", True, "InProgress", f"{len(left)} replicated volumes still have a "
                f"copy here: {', '.join(left)}")
    single = single_copy_volumes(pvs, pool)
    if single:
        return ("Retiring", True, "ExportBlocked", f"no replicated volume has a copy here, but "
                f"{len(single)} single-copy volumes remain and block the export (retirement "
                f"does not move single-copy volumes: back them up and restore them elsewhere, "
                f"or delete them): {', '.join(single)}")
    if previous == "Exported":
        return ("Retiring", True, "Exported", f"the pool was exported from {node}")
    if previous not in EXPORT_DUE:
        return ("Retiring", True, "Retired", "no volume has a copy in this pool; it is "
                f"exported from {node} next")
    return None


def export(agents: Agents, facts: ClusterFacts, node: str, pool: str) -> Condition:
    h = facts.health.get(node)
    if h is None or not h.ready:
        return ("Retiring", True, "ExportFailed", f"node {node} is not ready: the pool is "
                "exported once its agent answers")
    try:
        agents.export_pool(node, pool)
    except StateholdError as exc:
        log.info("event=export_failed node=%s pool=%s error=%s", node, pool, exc)
        return ("Retiring", True, "ExportFailed", f"the agent on {node} did not export the "
                f"pool: {exc}; retrying")
    log.info("event=pool_exported node=%s pool=%s", node, pool)
    return ("Retiring", True, "Exported", f"the pool was exported from {node}: its disks keep "
            "their data (`statehold pool import` on the node brings it back)")


def retire_pools(kube: Kube, agents: Agents, facts: ClusterFacts,
                 plans: Mapping[str, CopyPlan], now: Callable[[], datetime]) -> None:
    """The ``Retiring`` condition of each decommissioned pool, and its export when due
    (see the module's table). An Event for every change of reason or message."""
    if not facts.retiring:
        return
    pvs = kube.list(PV)
    for node, pool in sorted(facts.retiring):
        try:
            obj = kube.get(STORAGE_POOL, pool)
        except NotFound:
            continue
        old = (obj.get("status") or {}).get("conditions")
        previous = next((c.get("reason") for c in old or [] if c.get("type") == "Retiring"), None)
        cond = pool_condition(node, pool, plans, pvs, previous)
        if cond is None:
            cond = export(agents, facts, node, pool)
        conds = set_condition(old, *cond, now=now())
        if conds != old:
            kube.patch_status(STORAGE_POOL, pool, {"conditions": conds})
            kube.record_event(obj, type="Warning" if not cond[1] or cond[2] == "ExportFailed"
                              else "Normal", reason=cond[2], message=cond[3], component=COMPONENT)

