"""An offline check of Kubernetes' structural-schema rules for CRD schemas.

Written from the CustomResourceDefinition docs ("Specifying a structural schema") and the
API server's own check (apiextensions-apiserver ``pkg/apiserver/schema/validation.go``),
which every Kubernetes version since 1.16 applies to ``apiextensions.k8s.io/v1`` CRDs:

1. the root, every field (``properties``/``additionalProperties``) and every array item
   specify a non-empty ``type``, except nodes with ``x-kubernetes-int-or-string: true`` or
   ``x-kubernetes-preserve-unknown-fields: true``; the root's type is ``object``;
2. whatever a junctor (``allOf``/``anyOf``/``oneOf``/``not``) says about a field or an item
   is also specified outside the junctor;
3. inside a junctor there is no ``type``, ``default``, ``additionalProperties``, ``title``,
   ``description``, ``nullable: true``, no ``x-kubernetes-*`` extension, and no
   ``metadata`` property -- except the two int-or-string patterns, exactly
   ``anyOf: [{type: integer}, {type: string}]`` and the same ``anyOf`` as ``allOf[0]``;
4. ``metadata`` at the root restricts only ``name`` and ``generateName``.

Messages use the API server's paths and wording, so a failure here reads like the
``NonStructural`` condition a cluster would report.
"""

from __future__ import annotations

from typing import Any, Literal

Schema = dict[str, Any]
Level = Literal["root", "item", "field"]

ROOT_PATH = "spec.versions[{i}].schema.openAPIV3Schema"
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
JUNCTORS = ("allOf", "anyOf", "oneOf")
# generic keys a junctor must not carry (rule 3); "nullable" only when true
FORBIDDEN_IN_JUNCTOR = ("type", "default", "additionalProperties", "title", "description")
_MISSING_TYPE = {"root": "must not be empty at the root",
                 "item": "must not be empty for specified array items",
                 "field": "must not be empty for specified object fields"}


def violations(crd: dict[str, Any]) -> list[str]:
    """Every structural-schema violation in every version of a CRD (empty: structural)."""
    out: list[str] = []
    for i, version in enumerate(crd["spec"]["versions"]):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        path = ROOT_PATH.format(i=i)
        if schema is None:
            out.append(f"{path}: Required value: a structural schema is required")
            continue
        out += check_schema(schema, path)
    return sorted(out)


def check_schema(schema: Schema, path: str) -> list[str]:
    """Violations of one openAPIV3Schema (path: where it sits in the CRD)."""
    return sorted(_node(schema, "root", path) + _completeness(schema, path))


def _node(s: Schema, level: Level, path: str) -> list[str]:
    out: list[str] = []
    if s.get("type") == "array" and "items" not in s:
        out.append(f"{path}.items: Required value: must be specified")
    if isinstance(s.get("items"), dict):
        out += _node(s["items"], "item", f"{path}.items")
    for name, sub in (s.get("properties") or {}).items():
        out += _node(sub, "field", f"{path}.properties[{name}]")
    add = s.get("additionalProperties")
    if add is not None and level == "root":
        out.append(f"{path}.additionalProperties: Forbidden: must not be used at the root")
    if isinstance(add, dict):
        out += _node(add, "field", f"{path}.additionalProperties")

    int_or_string = s.get("x-kubernetes-int-or-string") is True
    preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
    embedded = s.get("x-kubernetes-embedded-resource") is True
    if int_or_string and preserve:
        out.append(f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: true: must be "
                   "false if x-kubernetes-int-or-string is true")
    if int_or_string and embedded:
        out.append(f"{path}.x-kubernetes-embedded-resource: Invalid value: true: must be "
                   "false if x-kubernetes-int-or-string is true")

    skip_any_of = s.get("anyOf") == INT_OR_STRING_ANY_OF
    all_of = s.get("allOf") or []
    skip_first_all_of_any_of = bool(all_of) and all_of[0].get("anyOf") == INT_OR_STRING_ANY_OF
    out += _junctors(s, path, skip_any_of=skip_any_of,
                     skip_first_all_of_any_of=skip_first_all_of_any_of)

    if embedded and s.get("type") != "object":
        out.append(f"{path}.type: Required value: must be object if "
                   "x-kubernetes-embedded-resource is true")
    elif not s.get("type") and not int_or_string and not preserve:
        out.append(f"{path}.type: Required value: {_MISSING_TYPE[level]}")
    if level == "root" and s.get("type") not in (None, "object"):
        out.append(f"{path}.type: Invalid value: {s['type']!r}: must be object at the root")
    if level == "root" and "metadata" in (s.get("properties") or {}):
        meta = s["properties"]["metadata"]
        extra = set(meta) - {"type", "properties", "default"}
        names = set(meta.get("properties") or {}) - {"name", "generateName"}
        if extra or names:
            out.append(f"{path}.properties[metadata]: Forbidden: must not specify anything "
                       "other than name and generateName, but metadata is implicitly specified")
    return out


def _junctors(s: Schema, path: str, *, skip_any_of: bool = False,
              skip_first_all_of_any_of: bool = False) -> list[str]:
    out: list[str] = []
    for key in JUNCTORS:
        for i, sub in enumerate(s.get(key) or []):
            if key == "anyOf" and skip_any_of:
                continue
            skip_nested = key == "allOf" and i == 0 and skip_first_all_of_any_of
            out += _nested(sub, f"{path}.{key}[{i}]", skip_any_of=skip_nested)
    if isinstance(s.get("not"), dict):
        out += _nested(s["not"], f"{path}.not")
    return out


def _nested(v: Schema, path: str, *, skip_any_of: bool = False) -> list[str]:
    """A schema under a junctor: value validations only (rule 3)."""
    out = _junctors(v, path, skip_any_of=skip_any_of)
    if isinstance(v.get("items"), dict):
        out += _nested(v["items"], f"{path}.items")
    for name, sub in (v.get("properties") or {}).items():
        out += _nested(sub, f"{path}.properties[{name}]")
    for key in FORBIDDEN_IN_JUNCTOR:
        if key in v:
            out.append(f"{path}.{key}: Forbidden: must be "
                       f"{'undefined' if key in ('default', 'additionalProperties') else 'empty'}"
                       " to be structural")
    if v.get("nullable") is True:
        out.append(f"{path}.nullable: Forbidden: must be false to be structural")
    for key in sorted(k for k in v if k.startswith("x-kubernetes-")):
        out.append(f"{path}.{key}: Forbidden: must be undefined to be structural")
    if "metadata" in (v.get("properties") or {}):
        out.append(f"{path}.properties[metadata]: Forbidden: must not be specified in a "
                   "nested context")
    return out


def _completeness(s: Schema, path: str) -> list[str]:
    """Rule 2: fields and items named inside junctors are specified outside them too.

    An API server checks this for the junctors at the root of the schema only (junctors of
    nested fields pass unchecked, as of 1.20 and since); the docs state the rule for every
    level, and so does this check."""
    out: list[str] = []
    for key in JUNCTORS:
        for i, sub in enumerate(s.get(key) or []):
            out += _covered(sub, s, path, f"{path}.{key}[{i}]")
    if isinstance(s.get("not"), dict):
        out += _covered(s["not"], s, path, f"{path}.not")
    if isinstance(s.get("items"), dict):
        out += _completeness(s["items"], f"{path}.items")
    for name, sub in (s.get("properties") or {}).items():
        out += _completeness(sub, f"{path}.properties[{name}]")
    if isinstance(s.get("additionalProperties"), dict):
        out += _completeness(s["additionalProperties"], f"{path}.additionalProperties")
    return out


def _covered(v: Schema, outer: Schema, s_path: str, v_path: str) -> list[str]:
    """What v (under a junctor, at v_path) names must exist in outer (at s_path)."""
    out: list[str] = []
    if isinstance(v.get("items"), dict):
        if not isinstance(outer.get("items"), dict):
            out.append(f"{s_path}.items: Required value: because it is defined in "
                       f"{v_path}.items")
        else:
            out += _covered(v["items"], outer["items"], f"{s_path}.items", f"{v_path}.items")
    for name, sub in (v.get("properties") or {}).items():
        spec = (outer.get("properties") or {}).get(name)
        where = f"properties[{name}]"
        if spec is None:
            out.append(f"{s_path}.{where}: Required value: because it is defined in "
                       f"{v_path}.{where}")
        else:
            out += _covered(sub, spec, f"{s_path}.{where}", f"{v_path}.{where}")
    for key in JUNCTORS:
        for i, sub in enumerate(v.get(key) or []):
            out += _covered(sub, outer, s_path, f"{v_path}.{key}[{i}]")
    if isinstance(v.get("not"), dict):
        out += _covered(v["not"], outer, s_path, f"{v_path}.not")
    return out
