"""A StatefulSet as the unit of a group backup: which set, which ordinals, which claims.

Pure functions over the API's JSON, shared by StatefulSetBackup, StatefulSetRestore and the
schedules that target sets. A set's controller names the claim of template ``t`` for pod
``o`` of set ``s`` exactly ``t-s-o`` (``<template>-<set>-<ordinal>``) and adopts a claim
that already has that name: that is what a restore relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statehold.backup.groupmanifest import ClaimTemplate
from statehold.controller.problems import Problem
from statehold.errors import InvalidArgument, NotFound
from statehold.kube import selectors
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import STATEFUL_SET

SET_LABEL = "statehold.io/statefulset"
"""On a StatefulSetBackup (by the operator or a schedule): the set it backs up."""


def claim_name(template: str, set_name: str, ordinal: int) -> str:
    """The claim a StatefulSet's controller makes for ``template`` and pod ``ordinal``."""
    return f"{template}-{set_name}-{ordinal}"


def ordinals(sts: Obj) -> list[int]:
    """The set's pod ordinals: ``spec.ordinals.start`` (0 unless set) onwards, one per
    replica (``spec.replicas``, 1 when absent, as the API server defaults it)."""
    spec = sts.get("spec") or {}
    start = int((spec.get("ordinals") or {}).get("start") or 0)
    replicas = spec.get("replicas")
    return list(range(start, start + (1 if replicas is None else int(replicas))))


def templates(sts: Obj) -> tuple[ClaimTemplate, ...]:
    """What a restore needs of each of the set's ``volumeClaimTemplates``."""
    out = []
    for t in (sts.get("spec") or {}).get("volumeClaimTemplates") or []:
        meta, spec = t.get("metadata") or {}, t.get("spec") or {}
        requests = (spec.get("resources") or {}).get("requests") or {}
        out.append(ClaimTemplate(
            name=str(meta.get("name", "")), storage_class=spec.get("storageClassName"),
            access_modes=tuple(spec.get("accessModes") or ("ReadWriteOnce",)),
            volume_mode=str(spec.get("volumeMode") or "Filesystem"),
            storage=str(requests.get("storage") or ""),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()}))
    return tuple(out)


def match_labels(sts: Obj) -> dict[str, str]:
    """The set's ``selector.matchLabels`` (its controller puts them on the claims it makes)."""
    sel = (sts.get("spec") or {}).get("selector") or {}
    return {str(k): str(v) for k, v in (sel.get("matchLabels") or {}).items()}


@dataclass(frozen=True, slots=True)
class SetMember:
    ordinal: int
    template: str
    claim: str


def members(set_name: str, ordinals_: list[int], templates_: tuple[ClaimTemplate, ...]
            ) -> list[SetMember]:
    """Every claim of the set: for each ordinal, each template (the order pods use them)."""
    return [SetMember(o, t.name, claim_name(t.name, set_name, o))
            for o in ordinals_ for t in templates_]


def find_statefulset(kube: Kube, namespace: str, name: str | None,
                     selector: Mapping[str, Any] | None) -> Obj:
    """The set a spec names (``name``) or selects (``selector``, exactly one set)."""
    if name:
        try:
            return kube.get(STATEFUL_SET, name, namespace)
        except NotFound:
            raise Problem("StatefulSetNotFound", f"StatefulSet {namespace}/{name} does not exist",
                          retry_after=60) from None
    try:
        sel = selectors.from_label_selector(dict(selector or {}))
    except InvalidArgument as exc:
        raise Problem("InvalidSelector", str(exc), permanent=True) from exc
    found = kube.list(STATEFUL_SET, namespace, label_selector=sel)
    if not found:
        raise Problem("StatefulSetNotFound", f"no StatefulSet in {namespace} matches the "
                      "selector", retry_after=60)
    if len(found) > 1:
        names = ", ".join(o["metadata"]["name"] for o in found)
        raise Problem("AmbiguousSelector", f"the selector matches {len(found)} StatefulSets "
                      f"({names}); a StatefulSetBackup backs up one (a BackupSchedule takes "
                      "several)", permanent=True)
    return found[0]
