"""Per-volume I/O limits set on claims, applied by the agent of the node holding the volume.

A claim's annotations ``statehold.io/qos-read-iops``, ``-write-iops``, ``-read-bps`` and
``-write-bps`` (the names of the volume labels; values as the StorageClass parameters:
``500``, ``20Mi``) override its volume's class limits. The agent writes the override on its
node (:class:`statehold.engine.qos.Overrides`) and applies it to the attached volume at
once: the rules are rewritten in place, nothing is remounted. Removing every annotation
drops an override the agent made (one made with ``statehold volume limits`` is the
operator's of the node and stays). A Normal ``LimitsChanged`` Event records each change,
a Warning ``InvalidLimits`` a malformed annotation (the previous limits stay).

Then every attached volume's rules are reconciled (:func:`statehold.engine.throttle.reconcile`):
on cgroup v1 that is how containers that started using a volume since the last pass get
their share, and how rules of detached loop devices are swept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from statehold.controller.node_volumes import held_claims
from statehold.engine import qos, throttle
from statehold.engine.node import Node
from statehold.errors import InvalidArgument, NotFound
from statehold.kube.facade import Kube
from statehold.kube.kinds import PVC

log = logging.getLogger("statehold.qos")
COMPONENT = "statehold-qos"
ANNOTATIONS: dict[str, str] = dict(qos.LABELS)
"""Field -> claim annotation (the same keys as the volume labels)."""


def annotation_limits(annotations: Mapping[str, str]) -> qos.Limits | None:
    """The limits a claim's annotations ask for; None when it has none of them."""
    given = {field: annotations[key] for field, key in ANNOTATIONS.items() if key in annotations}
    if not given:
        return None
    try:
        return qos.parse_settings(given)
    except InvalidArgument as exc:
        raise InvalidArgument(f"claim annotation {ANNOTATIONS[_field_of(str(exc))]}: {exc}") from exc


def _field_of(message: str) -> str:
    """The field a parse error names (parse_value puts it first: ``parameter write_iops=...``)."""
    return next((f for f in qos.FIELDS if f"{f}=" in message), qos.FIELDS[0])


class QosPass:
    """One pass of a node agent: claim annotations -> overrides, then every attached
    volume's rules. Keeps which malformed annotations it warned about (per process)."""

    def __init__(self, kube: Kube, node: Node, node_name: str,
                 throttle_: throttle.Throttle | None = None) -> None:
        self.kube, self.node, self.node_name = kube, node, node_name
        self.throttle = throttle_ if throttle_ is not None else throttle.Throttle.for_home(node.home)
        self.overrides = qos.Overrides(node.home)
        self._warned: set[tuple[str, str]] = set()

    def run(self) -> dict[str, str]:
        """``namespace/claim`` -> what changed (only claims whose limits changed or are bad)."""
        changes: dict[str, str] = {}
        for held in held_claims(self.kube, self.node):
            vol, key = held.volume, held.key
            try:
                pvc = self.kube.get(PVC, held.claim, held.namespace)
            except NotFound:
                continue
            annotations = (pvc.get("metadata") or {}).get("annotations") or {}
            try:
                wanted = annotation_limits(annotations)
            except InvalidArgument as exc:
                mark = (key, str(pvc["metadata"].get("resourceVersion")))
                if mark not in self._warned:
                    self._warned.add(mark)
                    self.kube.record_event(pvc, type="Warning", reason="InvalidLimits", message=str(exc),
                                           component=f"{COMPONENT}/{self.node_name}")
                changes[key] = f"invalid: {exc}"
                continue
            before = qos.configured(vol, self.overrides)
            if wanted is not None and (before.source != "override" or before.limits != wanted):
                self.overrides.put(vol, wanted, origin="annotation")
            elif wanted is None and self.overrides.origin(vol) == "annotation":
                self.overrides.clear(vol)
            after = qos.configured(vol, self.overrides)
            if after != before:
                message = (f"volume {vol.id}: {after.limits.text()} ({after.source}), "
                           f"was {before.limits.text()}")
                if vol.device is not None:
                    self.throttle.apply(vol.device, after.limits)  # at once, no remount
                    message += f"; applied to {vol.device}"
                self.kube.record_event(pvc, type="Normal", reason="LimitsChanged", message=message,
                                       component=f"{COMPONENT}/{self.node_name}")
                changes[key] = message
        throttle.reconcile(self.node.pools(), self.throttle, self.overrides)
        return changes
