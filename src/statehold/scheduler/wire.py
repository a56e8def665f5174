"""The kube-scheduler extender wire format (``k8s.io/kube-scheduler/extender/v1``), JSON.

Requests are ``ExtenderArgs {Pod, Nodes, NodeNames}``; the Go structs carry no json tags,
so the keys are the field names and Go decodes them case-insensitively — so do we.
Answers are ``ExtenderFilterResult {Nodes, NodeNames, FailedNodes,
FailedAndUnresolvableNodes, Error}`` and ``HostPriorityList [{Host, Score}]``.

Every unresolvable refusal is written into ``FailedNodes`` too: kube-scheduler before 1.21
does not know ``FailedAndUnresolvableNodes`` (kubernetes#92866) and would drop the reason
from the pod's PodScheduled message; from 1.21 a node in both maps counts as unresolvable
(the API's rule: that map takes precedence), so preemption still skips it.

Decoding raises :class:`statehold.errors.InvalidArgument` with a message fit for the
scheduler's event; nothing else escapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statehold.errors import InvalidArgument
from statehold.scheduler.core import ClaimKey, NodeScore


@dataclass(frozen=True, slots=True)
class PodRef:
    uid: str
    namespace: str
    name: str
    claims: tuple[ClaimKey, ...]
    """Every PersistentVolumeClaim the pod mounts, generic ephemeral volumes included."""

    @property
    def key(self) -> str:
        """Identity of the pod in the ledger: its UID, else namespace/name."""
        return self.uid or f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    pod: PodRef
    node_names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None
    """The full Node objects when the scheduler sent ``Nodes`` (nodeCacheCapable false);
    the answer must then carry Node objects too."""


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """Go's case-insensitive key match: the exact key first, then any casing."""
    if name in obj:
        return obj[name]
    lower = name.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lower:
            return v
    return None


def loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON: {exc}") from exc


def decode_pod(raw: Any) -> PodRef:
    if not isinstance(raw, Mapping):
        raise InvalidArgument("ExtenderArgs has no Pod")
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InvalidArgument("Pod has no metadata.name")
    namespace = meta.get("namespace") or "default"
    uid = meta.get("uid") or ""
    if not isinstance(namespace, str) or not isinstance(uid, str):
        raise InvalidArgument("Pod metadata.namespace and metadata.uid must be strings")
    spec = raw.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidArgument("Pod spec must be an object")
    volumes = spec.get("volumes")
    volumes = [] if volumes is None else volumes
    if not isinstance(volumes, list):
        raise InvalidArgument("Pod spec.volumes must be a list")
    claims: list[ClaimKey] = []
    for vol in volumes:
        if not isinstance(vol, Mapping):
            raise InvalidArgument("Pod spec.volumes holds a non-object")
        pvc = vol.get("persistentVolumeClaim")
        if isinstance(pvc, Mapping):
            name = pvc.get("claimName")
            if not isinstance(name, str) or not name:
                raise InvalidArgument(f"Pod volume {vol.get('name')!r} has no claimName")
            claims.append(ClaimKey(namespace, name))
        elif isinstance(vol.get("ephemeral"), Mapping):
            # A generic ephemeral volume's claim is named <pod>-<volume> (Kubernetes rule).
            claims.append(ClaimKey(namespace, f"{meta['name']}-{vol.get('name')}"))
    return PodRef(uid, namespace, meta["name"], tuple(dict.fromkeys(claims)))


def decode_args(raw: Any) -> ExtenderArgs:
    """An ``ExtenderArgs`` object from parsed JSON."""
    if not isinstance(raw, Mapping):
        raise InvalidArgument("ExtenderArgs must be a JSON object")
    pod = decode_pod(_field(raw, "Pod"))
    names = _field(raw, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument("NodeNames must be a list of strings")
        return ExtenderArgs(pod, tuple(names), None)
    nodes = _field(raw, "Nodes")
    if nodes is None:
        raise InvalidArgument("ExtenderArgs has neither NodeNames nor Nodes")
    if not isinstance(nodes, Mapping):
        raise InvalidArgument("Nodes must be a NodeList object")
    items = _field(nodes, "items") or []
    if not isinstance(items, list):
        raise InvalidArgument("Nodes must be a NodeList with items")
    out: list[str] = []
    for node in items:
        meta = node.get("metadata") if isinstance(node, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgument("a Node in Nodes has no metadata.name")
        out.append(name)
    return ExtenderArgs(pod, tuple(out), tuple(items))


def filter_result(args: ExtenderArgs | None, passed: Sequence[str], *,
                  failed: Mapping[str, str] | None = None,
                  unresolvable: Mapping[str, str] | None = None,
                  error: str = "") -> dict[str, Any]:
    """An ``ExtenderFilterResult``, answering in the form the request came in; each
    unresolvable node is in both maps (module docstring: schedulers before 1.21)."""
    result: dict[str, Any] = {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": {**(failed or {}), **(unresolvable or {})},
        "FailedAndUnresolvableNodes": dict(unresolvable or {}),
        "Error": error,
    }
    if args is None:
        return result
    if args.nodes is None:
        result["NodeNames"] = list(passed)
    else:
        keep = set(passed)
        result["Nodes"] = {"metadata": {}, "items": [
            n for n, name in zip(args.nodes, args.node_names, strict=True) if name in keep]}
    return result


def priority_list(scores: Sequence[NodeScore]) -> list[dict[str, Any]]:
    """A ``HostPriorityList``."""
    return [{"Host": s.node, "Score": s.score} for s in scores]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
