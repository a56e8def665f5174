"""Validate any object we ship: built-in kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), our kinds against our CRD schemas (with CEL twins), and the
snapshot.storage.k8s.io and groupsnapshot.storage.k8s.io kinds against small schemas written
from their API reference (those CRDs ship with the snapshot-controller, not with
kubernetes-validate).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from statehold.controller.schemas import validate_custom_resource

K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
ROOT = Path(__file__).resolve().parents[3]


def _load_render() -> Any:
    """deploy/render.py (a script, not a package module) loaded by path."""
    spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "deploy" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()

_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "minLength": 1}, "namespace": {"type": "string"},
    "labels": {"type": "object"}, "annotations": {"type": "object"}}}

SNAPSHOT_SCHEMAS: dict[str, dict[str, Any]] = {
    "VolumeSnapshotClass": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "driver", "deletionPolicy"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "snapshot.storage.k8s.io/v1"},
            "kind": {"const": "VolumeSnapshotClass"}, "metadata": _META,
            "driver": {"type": "string", "minLength": 1},
            "deletionPolicy": {"enum": ["Delete", "Retain"]},
            "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "VolumeSnapshot": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "snapshot.storage.k8s.io/v1"},
            "kind": {"const": "VolumeSnapshot"}, "metadata": _META,
            "spec": {"type": "object", "required": ["source"], "additionalProperties": False,
                     "properties": {
                         "volumeSnapshotClassName": {"type": "string"},
                         "source": {"type": "object", "additionalProperties": False,
                                    "minProperties": 1, "maxProperties": 1, "properties": {
                                        "persistentVolumeClaimName": {"type": "string"},
                                        "volumeSnapshotContentName": {"type": "string"}}}}}}},
}


GROUP_SNAPSHOT_SCHEMAS: dict[str, dict[str, Any]] = {
    # written from external-snapshotter's CRD (v8.6.0): the same fields in v1beta1, v1beta2, v1
    "VolumeGroupSnapshotClass": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "driver", "deletionPolicy"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"enum": [f"groupsnapshot.storage.k8s.io/{v}"
                                    for v in ("v1beta1", "v1beta2", "v1")]},
            "kind": {"const": "VolumeGroupSnapshotClass"}, "metadata": _META,
            "driver": {"type": "string", "minLength": 1},
            "deletionPolicy": {"enum": ["Delete", "Retain"]},
            "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "VolumeGroupSnapshot": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"enum": [f"groupsnapshot.storage.k8s.io/{v}"
                                    for v in ("v1beta1", "v1beta2", "v1")]},
            "kind": {"const": "VolumeGroupSnapshot"}, "metadata": _META,
            "spec": {"type": "object", "required": ["source"], "additionalProperties": False,
                     "properties": {
                         "volumeGroupSnapshotClassName": {"type": "string"},
                         "source": {"type": "object", "additionalProperties": False,
                                    "minProperties": 1, "maxProperties": 1, "properties": {
                                        "selector": {"type": "object", "minProperties": 1},
                                        "volumeGroupSnapshotContentName": {
                                            "type": "string"}}}}}}},
}


def validate_object(obj: dict[str, Any]) -> None:
    """Raise if obj is not valid for its kind (any Kubernetes version we support)."""
    api = obj.get("apiVersion", "")
    if api.startswith("statehold.io/"):
        validate_custom_resource(obj)
    elif api.startswith("snapshot.storage.k8s.io/"):
        jsonschema.validate(obj, SNAPSHOT_SCHEMAS[obj["kind"]])
    elif api.startswith("groupsnapshot.storage.k8s.io/"):
        jsonschema.validate(obj, GROUP_SNAPSHOT_SCHEMAS[obj["kind"]])
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def yaml_blocks(markdown: Path) -> list[dict[str, Any]]:
    """Every object in the ```yaml blocks of a Markdown file."""
    docs, block, inside = [], [], False
    for line in markdown.read_text().splitlines():
        if line.strip() == "```yaml":
            inside, block = True, []
        elif line.strip() == "```" and inside:
            inside = False
            docs += [d for d in yaml.safe_load_all("\n".join(block)) if d]
        elif inside:
            block.append(line)
    return docs
