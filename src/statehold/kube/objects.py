"""Typed views of the Kubernetes objects the operator reads most: claims and volumes.

The facade hands out raw JSON (``Obj = dict[str, Any]``). The controller's pure functions
that dig into claims and PVs type their arguments with these ``TypedDict``\\s instead, so a
misspelt field is a type error rather than a silent ``None``. Every field is optional
(``total=False``): objects written by other tools may lack any of them, and the readers
handle that. :func:`as_pvc` and :func:`as_pv` are the one checked crossing from ``Obj``.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from statehold.errors import InvalidArgument
from statehold.kube.facade import Obj


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]


class ClaimSpec(TypedDict, total=False):
    volumeName: str
    storageClassName: str
    accessModes: list[str]
    volumeMode: str
    resources: dict[str, dict[str, str]]


class ClaimStatus(TypedDict, total=False):
    phase: str
    capacity: dict[str, str]


class PersistentVolumeClaim(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ClaimSpec
    status: ClaimStatus


class CSISource(TypedDict, total=False):
    driver: str
    volumeHandle: str
    fsType: str
    volumeAttributes: dict[str, str]


class NodeSelectorRequirement(TypedDict, total=False):
    key: str
    operator: str
    values: list[str]


class NodeSelectorTerm(TypedDict, total=False):
    matchExpressions: list[NodeSelectorRequirement]


class NodeSelector(TypedDict, total=False):
    nodeSelectorTerms: list[NodeSelectorTerm]


class VolumeNodeAffinity(TypedDict, total=False):
    required: NodeSelector


class VolumeSpec(TypedDict, total=False):
    capacity: dict[str, str]
    csi: CSISource
    nodeAffinity: VolumeNodeAffinity
    accessModes: list[str]
    storageClassName: str
    volumeMode: str
    claimRef: dict[str, Any]
    persistentVolumeReclaimPolicy: str


class PersistentVolume(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: VolumeSpec


def _checked(obj: Obj, kind: str) -> Obj:
    found = obj.get("kind")
    if found not in (None, kind):  # list items from some clients carry no kind
        raise InvalidArgument(f"expected a {kind}, got a {found}")
    return obj


def as_pvc(obj: Obj) -> PersistentVolumeClaim:
    """``obj`` seen as a PersistentVolumeClaim (InvalidArgument when it is another kind)."""
    return cast(PersistentVolumeClaim, _checked(obj, "PersistentVolumeClaim"))


def as_pv(obj: Obj) -> PersistentVolume:
    """``obj`` seen as a PersistentVolume (InvalidArgument when it is another kind)."""
    return cast(PersistentVolume, _checked(obj, "PersistentVolume"))
