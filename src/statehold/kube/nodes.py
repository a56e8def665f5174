"""What a Node object says about the node's health and place, as a plain value. Pure.

The operator (failover, placement) and the scheduler extender (ranking copy holders)
read the same facts from a ``v1 Node``, so they are read here once:

* **Ready**: the ``Ready`` condition is ``True``. ``False`` and ``Unknown`` (the kubelet
  stopped posting: the node controller then also adds ``node.kubernetes.io/unreachable``)
  are both *not ready*.
* **Out of service**: the taint ``node.kubernetes.io/out-of-service`` (any value, effect
  ``NoExecute`` or ``NoSchedule``), which an administrator adds after making sure a node is
  really off (Kubernetes' non-graceful node shutdown, GA in 1.28). It is the fence:
  Statehold promotes another copy of a volume only when the primary's node is not ready
  *and* out of service, because a node that is merely unreachable may still be writing.
* **Unschedulable**: ``spec.unschedulable`` (cordoned, or being drained).
* **Zone**: the ``topology.kubernetes.io/zone`` label, when the node carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
UNREACHABLE = "node.kubernetes.io/unreachable"
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True, slots=True)
class NodeHealth:
    name: str
    ready: bool = True
    out_of_service: bool = False
    unschedulable: bool = False
    zone: str | None = None

    @property
    def available(self) -> bool:
        """The node can run the volume's pod now."""
        return self.ready and not self.out_of_service

    @property
    def fenced(self) -> bool:
        """Down, and declared off by an administrator: its copies cannot be writing."""
        return not self.ready and self.out_of_service


def node_health(obj: Mapping[str, Any]) -> NodeHealth:
    """The health of a raw Node object."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = spec.get("taints") or []
    return NodeHealth(
        name=str(meta.get("name", "")),
        ready=ready,
        out_of_service=any(t.get("key") == OUT_OF_SERVICE for t in taints),
        unschedulable=bool(spec.get("unschedulable")),
        zone=(meta.get("labels") or {}).get(ZONE_LABEL) or None,
    )
