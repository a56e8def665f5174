"""Every CRD we ship is a structural schema (what an API server checks before it accepts a
CRD), tested offline with :mod:`tests.unit.controller.structural`; and the checker itself
flags what the Kubernetes docs call non-structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from statehold.controller.crds import all_crds
from tests.unit.controller.structural import check_schema, violations

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def shipped_crds() -> list[tuple[str, dict[str, Any]]]:
    """Every CustomResourceDefinition in a YAML file under deploy/ (chart crds/, the
    rendered manifests, anything added later), plus the generator's own output."""
    out = [(f"crds.py:{c['metadata']['name']}", c) for c in all_crds()]
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "templates" in path.parts:  # Helm templates are not YAML until rendered
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out.append((f"{path.relative_to(DEPLOY)}:{doc['metadata']['name']}", doc))
    return out


SHIPPED = shipped_crds()


def test_the_shipped_crds_are_found() -> None:
    generated = {c["metadata"]["name"] for c in all_crds()}
    assert len(generated) >= 5
    assert {c["metadata"]["name"] for _, c in SHIPPED} == generated
    # the generator, the chart's crds/ and the rendered manifests: three copies of each
    assert len(SHIPPED) == 3 * len(generated)


@pytest.mark.parametrize(("where", "crd"), SHIPPED, ids=[w for w, _ in SHIPPED])
def test_every_shipped_crd_is_structural(where: str, crd: dict[str, Any]) -> None:
    assert violations(crd) == [], where


# -- the checker against the examples of the Kubernetes docs -------------------------------

P = "spec.versions[0].schema.openAPIV3Schema"


def test_checker_flags_the_docs_non_structural_example() -> None:
    schema = {
        "properties": {
            "foo": {"pattern": "abc"},
            "metadata": {"type": "object", "properties": {
                "name": {"type": "string", "pattern": "^a"},
                "finalizers": {"type": "array",
                               "items": {"type": "string", "pattern": "my-finalizer"}}}}},
        "anyOf": [{"properties": {"bar": {"type": "integer", "minimum": 42}},
                   "required": ["bar"], "description": "foo bar object"}],
    }
    got = check_schema(schema, P)
    assert f"{P}.type: Required value: must not be empty at the root" in got
    assert f"{P}.properties[foo].type: Required value: must not be empty for specified " \
           "object fields" in got
    assert f"{P}.properties[bar]: Required value: because it is defined in " \
           f"{P}.anyOf[0].properties[bar]" in got
    assert f"{P}.anyOf[0].properties[bar].type: Forbidden: must be empty to be structural" in got
    assert f"{P}.anyOf[0].description: Forbidden: must be empty to be structural" in got
    assert any(g.startswith(f"{P}.properties[metadata]: Forbidden") for g in got)


def test_checker_accepts_the_docs_structural_example() -> None:
    schema = {
        "type": "object", "description": "foo bar object",
        "properties": {"foo": {"type": "string", "pattern": "abc"},
                       "bar": {"type": "integer"},
                       "metadata": {"type": "object",
                                    "properties": {"name": {"type": "string", "pattern": "^a"}}}},
        "anyOf": [{"properties": {"bar": {"minimum": 42}}, "required": ["bar"]}],
    }
    assert check_schema(schema, P) == []


def wrap(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"size": prop}}


@pytest.mark.parametrize("prop", [
    {"x-kubernetes-int-or-string": True},
    {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
    {"x-kubernetes-int-or-string": True, "minimum": 1, "pattern": "^[0-9]+$", "maxLength": 9,
     "description": "d", "anyOf": [{"type": "integer"}, {"type": "string"}]},
    {"x-kubernetes-int-or-string": True,
     "allOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]}, {"minimum": 1}]},
    {"x-kubernetes-preserve-unknown-fields": True},
])
def test_checker_accepts_the_int_or_string_patterns(prop: dict[str, Any]) -> None:
    assert check_schema(wrap(prop), P) == []


@pytest.mark.parametrize(("prop", "expected"), [
    # what the chart shipped: checks inside the anyOf make it more than the exact pattern
    ({"x-kubernetes-int-or-string": True,
      "anyOf": [{"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^[0-9]+$", "maxLength": 64}]},
     ["anyOf[0].type: Forbidden: must be empty to be structural",
      "anyOf[1].type: Forbidden: must be empty to be structural"]),
    ({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "string"}, {"type": "integer"}]},
     ["anyOf[0].type: Forbidden", "anyOf[1].type: Forbidden"]),
    # the exact pattern is allowed in the anyOf, but without the extension a type is due
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]},
     ["properties[size].type: Required value"]),
    ({"type": "string", "oneOf": [{"pattern": "a", "nullable": True, "default": "x"}]},
     ["oneOf[0].nullable: Forbidden", "oneOf[0].default: Forbidden"]),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "allOf": [{"x-kubernetes-validations": [{"rule": "true"}]}]},
     ["allOf[0].x-kubernetes-validations: Forbidden"]),
    ({"type": "object", "not": {"additionalProperties": {"type": "string"}}},
     ["not.additionalProperties: Forbidden"]),
    ({"type": "array"}, ["properties[size].items: Required value"]),
    ({"type": "array", "items": {"type": "string"}, "anyOf": [{"items": {"properties": {
        "x": {"minimum": 1}}}}]},
     ["properties[size].items.properties[x]: Required value: because it is defined in "
      f"{P}.properties[size].anyOf[0].items.properties[x]"]),
])
def test_checker_flags_non_structural_properties(prop: dict[str, Any], expected: list[str]) -> None:
    got = check_schema(wrap(prop), P)
    for e in expected:
        assert any(e in g for g in got), (e, got)
