"""A stand-in for kube-scheduler's extender calls and the cluster's reactions to them.

Per pod, as kube-scheduler does: filter over the candidate nodes, prioritize over the ones
that passed (skipped when only one passed), choose a node, then (binding cycle) annotate
the claims with ``volume.kubernetes.io/selected-node``. Provisioning — PVs bound, pools
reporting the new usage — happens later, after the whole burst: the worst case.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from statehold.scheduler.core import PoolState
from statehold.scheduler.view import ClaimInfo, MemoryClusterView, VolumeInfo
from tests.unit.scheduler import shapes

Post = Callable[[str, bytes], tuple[int, Any]]
"""(verb, body) → (HTTP status, decoded JSON answer)."""


@dataclass
class Burst:
    post: Post
    view: MemoryClusterView
    nodes: list[str]
    choose: str = "top"
    """"top": highest extender score, random among equals (as the scheduler breaks ties);
    "any": a random node among those that passed (other plugins outweighed us)."""
    annotate: bool = True
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    placed: dict[str, str] = field(default_factory=dict)
    """pod name → node."""
    unschedulable: list[str] = field(default_factory=list)

    def schedule(self, pod: dict[str, Any], claims: list[ClaimInfo]) -> str | None:
        name = pod["metadata"]["name"]
        status, out = self.post("filter", json.dumps(shapes.args(pod, self.nodes)).encode())
        assert status == 200 and out["Error"] == "", out
        passed = out["NodeNames"]
        if not passed:
            self.unschedulable.append(name)
            return None
        if len(passed) == 1:
            chosen = passed[0]
        else:
            status, scores = self.post("prioritize",
                                       json.dumps(shapes.args(pod, passed)).encode())
            assert status == 200
            if self.choose == "top":
                top = max(s["Score"] for s in scores)
                chosen = self.rng.choice([s["Host"] for s in scores if s["Score"] == top])
            else:
                chosen = self.rng.choice(passed)
        self.placed[name] = chosen
        if self.annotate:
            for c in claims:
                self.view.put_claim(replace(c, selected_node=chosen))
        return chosen

    def provision(self, claims_of: dict[str, list[ClaimInfo]]) -> None:
        """What the CSI provisioner and the agents do afterwards: create each volume on
        its node, bind the claim, report the pool's new usage."""
        for pod_name, node in self.placed.items():
            for c in claims_of[pod_name]:
                pv = f"pv-{c.name}"
                self.view.put_volume(VolumeInfo(pv, shapes.DRIVER, f"p/{pv}", frozenset({node}),
                                                node))
                self.view.put_claim(replace(c, volume_name=pv, selected_node=node))
                pool = self.view.pools()[node][0]
                self.view.put_pool(PoolState(pool.node, pool.name, pool.capacity,
                                             pool.allocated + c.request, pool.overprovision))


def committed(burst: Burst, claims_of: dict[str, list[ClaimInfo]]) -> dict[str, int]:
    """Bytes the placed pods put on each node."""
    out: dict[str, int] = {}
    for pod_name, node in burst.placed.items():
        out[node] = out.get(node, 0) + sum(c.request for c in claims_of[pod_name])
    return out
