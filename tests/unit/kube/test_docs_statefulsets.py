"""Every API object shown in docs/statefulsets.md is valid for its kind, and its group
snapshot class is the one the chart renders."""

from __future__ import annotations

from typing import Any

from tests.unit.kube.validation import ROOT, render, validate_object, yaml_blocks

GUIDE = ROOT / "docs" / "statefulsets.md"


def _objects() -> list[dict[str, Any]]:
    return [d for d in yaml_blocks(GUIDE) if isinstance(d, dict) and "kind" in d]


def test_every_object_in_the_guide_is_valid() -> None:
    objects = _objects()
    assert {"VolumeGroupSnapshotClass", "VolumeGroupSnapshot",
            "PersistentVolumeClaim"} <= {d["kind"] for d in objects}
    for doc in objects:
        validate_object(doc)


def test_the_guide_shows_the_class_and_values_the_chart_renders() -> None:
    (values,) = [d for d in yaml_blocks(GUIDE) if isinstance(d, dict) and "groupSnapshots" in d]
    (shown,) = [d for d in _objects() if d["kind"] == "VolumeGroupSnapshotClass"]
    (rendered,) = [d for d in render.render_chart(values)
                   if d["kind"] == "VolumeGroupSnapshotClass"]
    for key in ("apiVersion", "kind", "driver", "deletionPolicy", "parameters"):
        assert shown[key] == rendered[key], key
    assert shown["metadata"]["annotations"] == rendered["metadata"]["annotations"]
