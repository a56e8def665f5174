"""Resolve a pod's claims through a ClusterView into the core's :class:`PodVolumes`.

Which claims are ours, and what each one asks of a node:

* bound to a PV of our driver with node affinity → a :class:`BoundVolume` (data is on
  those nodes only); bound to a PV without node affinity (a shared volume) → no constraint;
* bound to a replicated PV (its affinity requires its copy label) → a :class:`BoundVolume`
  over the copies that can serve, from its ReplicatedVolume (:func:`replicated`): the
  primary's node ranked first while it is available, else the other copy holders by newest
  acknowledged point; without a record yet, the node affinity alone decides;
* unbound, its StorageClass provisioned by our driver with ``WaitForFirstConsumer`` and
  not in shared mode → a :class:`PendingClaim` (room needed on the chosen node);
* unbound with ``Immediate`` binding, or any claim of another driver → not our business
  (kube-scheduler's VolumeBinding plugin handles it);
* a claim that does not exist, or bound to a PV that does not exist → a problem: every
  node fails with that reason, since the pod cannot start anywhere until it is fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from statehold.errors import InvalidArgument
from statehold.kube.nodes import NodeHealth
from statehold.replication.points import parse_point
from statehold.scheduler.core import BoundVolume, ClaimKey, MiB, PendingClaim, PodVolumes
from statehold.scheduler.view import DRIVER, ClusterView, ReplicaSetInfo, StorageClassInfo
from statehold.scheduler.wire import PodRef


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """How StorageClasses and PVs are recognised as Statehold's."""

    drivers: frozenset[str] = frozenset({DRIVER})
    """Provisioner / CSI driver names that are ours."""
    pool_parameters: tuple[str, ...] = ("pool", "statehold.io/pool")
    """StorageClass parameters naming the pool a class allocates from (first one wins)."""
    mode_parameters: tuple[str, ...] = ("type", "mode", "statehold.io/mode")
    """StorageClass parameters giving the mode (the CSI driver reads ``type``: local or
    shared); ``shared`` classes are not node-local."""


def round_up(n: int, unit: int = MiB) -> int:
    """Pools allocate whole MiB (engine rule), so a 1-byte request costs one MiB."""
    return -(-n // unit) * unit


def _param(params: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if params.get(n):
            return params[n]
    return None


def is_local_class(sc: StorageClassInfo, policy: ClaimPolicy) -> bool:
    mode = _param(sc.parameters, policy.mode_parameters)
    return sc.provisioner in policy.drivers and (mode or "local").lower() != "shared"


def _point_key(point: str | None) -> tuple[int, int]:
    try:
        return parse_point(point) if point else (0, 0)
    except InvalidArgument:
        return (0, 0)


def replicated(claim: ClaimKey, pv: str, rs: ReplicaSetInfo,
               primary: NodeHealth | None) -> BoundVolume:
    """The nodes a replicated volume can be used on (replication.md §8.3). Pure.

    Copies that can serve are the primary and the replicas holding an acknowledged point
    (a seeding or stale copy cannot). While the primary's node is available the volume is
    on those nodes, primary first (a replica node means a planned move at stage time).
    When it is not (NotReady, or out of service), the other serving copies are admitted,
    ranked by newest acknowledged point by (epoch, seq), ties by name.
    """
    serving = {c.node for c in rs.copies if c.role == "replica" and c.point} | {rs.primary}
    if primary is not None and primary.available:
        return BoundVolume(claim, pv, frozenset(serving), rs.primary)
    points = {c.node: _point_key(c.point) for c in rs.copies}
    others = sorted(serving - {rs.primary}, key=lambda n: (tuple(-x for x in points.get(
        n, (0, 0))), n))
    return BoundVolume(claim, pv, frozenset(others), None, tuple(others))


def resolve(pod: PodRef, view: ClusterView, policy: ClaimPolicy) -> PodVolumes:
    bound: list[BoundVolume] = []
    pending: list[PendingClaim] = []
    problems: list[str] = []
    for key in pod.claims:
        claim = view.claim(key.namespace, key.name)
        if claim is None:
            problems.append(f"persistentvolumeclaim {key} not found")
            continue
        if claim.volume_name:
            pv = view.volume(claim.volume_name)
            if pv is None:
                problems.append(f"claim {key} is bound to volume {claim.volume_name}, "
                                "which does not exist")
            elif pv.driver in policy.drivers and pv.copy_label:
                rs = view.replica_set(pv.name)
                if rs is not None:
                    bound.append(replicated(key, pv.name, rs, view.node_health(rs.primary)))
            elif pv.driver in policy.drivers and pv.nodes:
                bound.append(BoundVolume(key, pv.name, pv.nodes, pv.primary))
            continue
        if not claim.storage_class:
            continue
        sc = view.storage_class(claim.storage_class)
        if sc is None or not sc.wait_for_first_consumer or not is_local_class(sc, policy):
            continue
        pending.append(PendingClaim(key, round_up(claim.request),
                                    _param(sc.parameters, policy.pool_parameters),
                                    claim.selected_node or None))
    return PodVolumes(str(pod), tuple(bound), tuple(pending), tuple(problems))
