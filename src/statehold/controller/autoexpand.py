"""Claims that grow before they fill: the node agent's autoexpansion pass.

Each node agent looks at the filesystems of the Statehold volumes mounted on its node (a
``statvfs`` of the mount, what NodeGetVolumeStats reports), and when one has crossed its
claim's threshold it patches the claim's ``spec.resources.requests.storage``: Kubernetes'
resizer (ControllerExpandVolume) and kubelet (NodeExpandVolume) then grow the volume and its
filesystem, online for xfs and btrfs, exactly as for a user's edit. The agent of the node
that holds the volume decides, so no two deciders ever act on one claim, and it knows its
pool's free space first-hand.

Policy (docs/install.md, "Automatic expansion"): StorageClass parameters, overridden key by
key by the claim's annotations, with the same names:

* ``statehold.io/autoexpand-threshold``: ``80%`` (grow when at least 80 % is used) or a
  quantity (``2Gi``: grow when less than that is free); ``off`` on a claim turns it off;
* ``statehold.io/autoexpand-step``: ``20%`` of the claim's current size (default) or a
  quantity;
* ``statehold.io/autoexpand-max``: the ceiling, a quantity (required: a claim that grows
  without bound takes its neighbours' pool).

:func:`decide` is pure. One pass grows a claim by as many steps as its current usage needs
to fall back under the threshold (at least one, the last clipped to the ceiling), only when
the previous resize has finished (``status.capacity`` reached the request), so a volume
that fills faster than one step per pass gets successive steps and never more than the
ceiling. Every growth records a Normal ``AutoExpanded`` Event on the claim; the ceiling, a
pool without room, a class that does not allow expansion or a malformed policy set the
claim's condition ``AutoExpandStopped`` (True, with the reason) and record one Warning
Event when that happens -- not on every pass.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from statehold.controller.conditions import find, set_condition
from statehold.controller.node_volumes import held_claims
from statehold.controller.report import Clock
from statehold.engine.names import parse_size
from statehold.engine.node import Node
from statehold.engine.types import MiB, Volume, VolumeMode
from statehold.errors import (
    Aborted,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    StateholdError,
    Unavailable,
)
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import PVC, STORAGE_CLASS

log = logging.getLogger("statehold.autoexpand")

THRESHOLD = "statehold.io/autoexpand-threshold"
STEP = "statehold.io/autoexpand-step"
MAX = "statehold.io/autoexpand-max"
KEYS = (THRESHOLD, STEP, MAX)
DEFAULT_STEP = "20%"
OFF = ("off", "false", "")
CONDITION = "AutoExpandStopped"
COMPONENT = "statehold-autoexpand"

_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")


@dataclass(frozen=True, slots=True)
class Policy:
    """Exactly one of each pair is set."""

    used_percent: Decimal | None   # grow when used >= this % of the filesystem
    min_free: int | None           # or when free < this many bytes
    step_percent: Decimal | None   # grow by this % of the claim's size
    step_bytes: int | None         # or by this many bytes
    ceiling: int                   # never request more

    def text(self) -> str:
        when = f"{self.used_percent}% used" if self.used_percent is not None else (
            f"less than {_mib(self.min_free or 0)} free")
        step = f"{self.step_percent}%" if self.step_percent is not None else _mib(self.step_bytes or 0)
        return f"at {when}, by {step}, up to {_mib(self.ceiling)}"


def _mib(n: int) -> str:
    return f"{-(-n // MiB)}Mi"


def _percent(key: str, text: str) -> Decimal | None:
    match = _PERCENT.fullmatch(text.strip())
    if match is None:
        return None
    value = Decimal(match.group(1))
    if not 0 < value <= 100 and key == THRESHOLD:
        raise InvalidArgument(f"{key}={text!r}: a percentage from 0 (exclusive) to 100")
    if value <= 0:
        raise InvalidArgument(f"{key}={text!r} must be positive")
    return value


def _bytes(key: str, text: str) -> int:
    try:
        return parse_size(text.strip())
    except (InvalidArgument, OutOfRange) as exc:
        raise InvalidArgument(f"{key}={text!r}: {exc}") from exc


def policy_of(class_parameters: Mapping[str, str], annotations: Mapping[str, str]) -> Policy | None:
    """The claim's policy (its annotations over its class's parameters), None when it has
    none or turns it off; InvalidArgument for a malformed one."""
    merged = {k: class_parameters[k] for k in KEYS if k in class_parameters}
    merged |= {k: annotations[k] for k in KEYS if k in annotations}
    threshold = merged.get(THRESHOLD, "").strip()
    if threshold.lower() in OFF:
        return None
    if MAX not in merged:
        raise InvalidArgument(f"{THRESHOLD} is set but {MAX} is not: a ceiling is required")
    used = _percent(THRESHOLD, threshold)
    free = None if used is not None else _bytes(THRESHOLD, threshold)
    step_text = merged.get(STEP, DEFAULT_STEP)
    step_pct = _percent(STEP, step_text)
    step = None if step_pct is not None else _bytes(STEP, step_text)
    return Policy(used, free, step_pct, step, _bytes(MAX, merged[MAX]))


@dataclass(frozen=True, slots=True)
class Usage:
    """A mounted filesystem's numbers (statvfs): size, used, available to users."""

    total: int
    used: int
    available: int


Outcome = Literal["within", "grow", "resizing", "ceiling", "pool-full"]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    size: int = 0          # the new request ("grow")
    steps: int = 0
    message: str = ""


def _crossed(policy: Policy, used: int, total: int, available: int) -> bool:
    if policy.used_percent is not None:
        return total > 0 and Decimal(used) * 100 >= policy.used_percent * total
    return available < (policy.min_free or 0)


def decide(policy: Policy, usage: Usage, requested: int, capacity: int, room: int) -> Decision:
    """What to do with a claim of ``capacity`` bytes (``requested``: its spec) whose
    filesystem shows ``usage``, its pool having ``room`` bytes left to provision."""
    used_pct = Decimal(usage.used) * 100 / usage.total if usage.total else Decimal(0)
    now = f"{used_pct:.1f}% used, {_mib(usage.available)} free"
    if not _crossed(policy, usage.used, usage.total, usage.available):
        return Decision("within", message=f"{now}: under the threshold ({policy.text()})")
    if requested > capacity:
        return Decision("resizing", message=f"{now}: waiting for the resize to {_mib(requested)} "
                        f"(now {_mib(capacity)})")
    if capacity >= policy.ceiling:
        return Decision("ceiling", message=f"{now} and the claim is at its ceiling "
                        f"{_mib(policy.ceiling)} ({MAX})")
    step = policy.step_bytes if policy.step_bytes is not None else int(
        Decimal(capacity) * (policy.step_percent or Decimal(0)) / 100)
    step = max(MiB, -(-step // MiB) * MiB)
    steps, size = 0, capacity
    while size < policy.ceiling:
        steps += 1
        size = min(policy.ceiling, capacity + steps * step)
        grown = size - capacity  # a filesystem grows by what its device grows
        if not _crossed(policy, usage.used, usage.total + grown, usage.available + grown):
            break
    size = max(MiB, -(-size // MiB) * MiB) if size < policy.ceiling else policy.ceiling
    if size - capacity > room:
        return Decision("pool-full", message=f"{now}: growing to {_mib(size)} needs "
                        f"{_mib(size - capacity)} and the pool has {_mib(room)} left")
    clipped = " (clipped to the ceiling)" if size == policy.ceiling else ""
    return Decision("grow", size=size, steps=steps,
                    message=f"{now}: {_mib(capacity)} -> {_mib(size)}, {steps} step(s) "
                    f"{policy.text()}{clipped}")


# -- acting on the cluster -----------------------------------------------------------------------
Measure = Callable[[Volume], Usage | None]


@dataclass(frozen=True, slots=True)
class Report:
    """What a pass did with one claim: ``grown``, ``stopped`` (the condition says why),
    ``within``, ``resizing``, ``skipped`` (no policy, not mounted here) or ``retry``."""

    outcome: str
    message: str = ""


def statvfs_usage(vol: Volume) -> Usage | None:
    """The volume's filesystem as mounted on this node (any of its mounts), or None."""
    if vol.mode is VolumeMode.BLOCK:
        return None
    for target in vol.mounts:
        try:
            st = os.statvfs(target)
        except OSError:
            continue
        return Usage(total=st.f_blocks * st.f_frsize, used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                     available=st.f_bavail * st.f_frsize)
    return None


def _quantity(obj: Obj | None, *path: str) -> int:
    for key in path:
        obj = (obj or {}).get(key)
    try:
        return parse_size(str(obj)) if obj else 0
    except (InvalidArgument, OutOfRange):
        return 0


class Pass:
    """One autoexpansion pass of a node agent over the claims of its volumes."""

    def __init__(self, kube: Kube, node: Node, node_name: str, now: Clock,
                 measure: Measure = statvfs_usage) -> None:
        self.kube, self.node, self.node_name, self.now, self.measure = kube, node, node_name, now, measure

    def run(self) -> dict[str, Report]:
        """``namespace/claim`` -> what happened, for every claim whose volume is mounted here."""
        results: dict[str, Report] = {}
        for held in held_claims(self.kube, self.node):
            key = held.key
            try:
                results[key] = self.claim(held.volume, held.claim, held.namespace)
            except (Aborted, Unavailable) as exc:  # a write raced us, or the API is away: next pass
                results[key] = Report("retry", str(exc))
            except StateholdError as exc:
                log.warning("autoexpand claim=%s error=%s", key, exc)
                results[key] = Report("retry", str(exc))
        return results

    def claim(self, vol: Volume, name: str, namespace: str) -> Report:
        try:
            pvc = self.kube.get(PVC, name, namespace)
        except NotFound:
            return Report("skipped")
        usage = self.measure(vol)
        if usage is None:
            return Report("skipped")  # not mounted here (yet), or a block volume
        class_name = (pvc.get("spec") or {}).get("storageClassName") or ""
        sc: Obj = {}
        if class_name:
            try:
                sc = self.kube.get(STORAGE_CLASS, class_name)
            except NotFound:
                sc = {}
        annotations = (pvc.get("metadata") or {}).get("annotations") or {}
        try:
            policy = policy_of(sc.get("parameters") or {}, annotations)
        except InvalidArgument as exc:
            return self._stopped(pvc, "InvalidPolicy", str(exc))
        if policy is None:
            return Report("skipped")
        requested = _quantity(pvc, "spec", "resources", "requests", "storage")
        capacity = _quantity(pvc, "status", "capacity", "storage") or vol.size
        room = max(0, self.node.pool(vol.pool).capacity().allocatable)
        decision = decide(policy, usage, requested, capacity, room)
        if decision.outcome == "ceiling":
            return self._stopped(pvc, "CeilingReached", decision.message)
        if decision.outcome == "pool-full":
            return self._stopped(pvc, "PoolFull", decision.message)
        if decision.outcome == "grow":
            if not sc.get("allowVolumeExpansion"):
                return self._stopped(pvc, "ExpansionNotAllowed", f"{decision.message}; but "
                                     f"StorageClass {class_name or '(none)'} does not allow "
                                     "volume expansion")
            return self._grow(pvc, vol, decision)
        if decision.outcome == "within":
            self._condition(pvc, False, "WithinThreshold", decision.message)
        return Report(decision.outcome, decision.message)

    def _grow(self, pvc: Obj, vol: Volume, decision: Decision) -> Report:
        name, namespace = pvc["metadata"]["name"], pvc["metadata"].get("namespace")
        patch = {"metadata": {"resourceVersion": pvc["metadata"]["resourceVersion"]},
                 "spec": {"resources": {"requests": {"storage": _mib(decision.size)}}}}
        try:
            grown = self.kube.patch(PVC, name, patch, namespace)
        except (InvalidArgument, PermissionDenied) as exc:  # e.g. admission refused the resize
            return self._stopped(pvc, "ExpansionRefused", f"{decision.message}; the API server "
                                 f"refused the new size: {exc}")
        self.kube.record_event(grown, type="Normal", reason="AutoExpanded",
                               message=decision.message, component=f"{COMPONENT}/{self.node_name}")
        log.info("autoexpand claim=%s/%s volume=%s size=%d", namespace, name, vol.id, decision.size)
        self._condition(grown, False, "Expanding", decision.message)
        return Report("grown", decision.message)

    def _stopped(self, pvc: Obj, reason: str, message: str) -> Report:
        """Condition True with the reason; one Warning Event when it newly stops (or for
        another reason), not on every pass."""
        old = find((pvc.get("status") or {}).get("conditions"), CONDITION)
        if old is None or old.get("status") != "True" or old.get("reason") != reason:
            self.kube.record_event(pvc, type="Warning", reason=f"AutoExpand{reason}", message=message,
                                   component=f"{COMPONENT}/{self.node_name}")
        self._condition(pvc, True, reason, message)
        return Report("stopped", message)

    def _condition(self, pvc: Obj, stopped: bool, reason: str, message: str) -> None:
        """Set ``AutoExpandStopped`` (compare-and-set of the claim's status); unchanged
        status and reason are not rewritten, so a quiet claim costs no write."""
        conditions = (pvc.get("status") or {}).get("conditions")
        old = find(conditions, CONDITION)
        status = "True" if stopped else "False"
        if old is not None and old.get("status") == status and old.get("reason") == reason:
            return
        if old is None and not stopped and reason == "WithinThreshold":
            return  # never stopped: nothing to say
        current = self.kube.get(PVC, pvc["metadata"]["name"], pvc["metadata"].get("namespace"))
        status_obj: dict[str, Any] = dict(current.get("status") or {})
        status_obj["conditions"] = set_condition(status_obj.get("conditions"), CONDITION, stopped,
                                                 reason, message, now=self.now())
        current["status"] = status_obj
        self.kube.replace_status(current)


def autoexpand_pass(kube: Kube, node: Node, node_name: str, now: Clock,
                    measure: Measure = statvfs_usage) -> dict[str, Report]:
    return Pass(kube, node, node_name, now, measure).run()
