"""Admission of our custom resources outside a real API server: defaults, schema, CEL.

What the API server does for a CRD (apply ``default``s, validate the structural schema with
strict field validation as kubectl asks for, evaluate ``x-kubernetes-validations``) done in
Python with the same schemas, so the in-memory API rejects what a cluster would reject.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from statehold.controller.cel_rules import RULES, is_transition_rule
from statehold.controller.crds import GROUP, VERSION, all_crds
from statehold.errors import InvalidArgument

Schema = dict[str, Any]


def _strict(schema: Schema) -> Schema:
    """Unknown fields are errors (kubectl's default fieldValidation=Strict)."""
    s = copy.deepcopy(schema)
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s:
        s["additionalProperties"] = False
    for key in ("properties",):
        for name, sub in list(s.get(key, {}).items()):
            s[key][name] = _strict(sub)
    if "items" in s:
        s["items"] = _strict(s["items"])
    return s


_SCHEMAS: dict[str, Schema] = {}


def schema_for(kind: str) -> Schema:
    """The openAPIV3Schema of one of our kinds."""
    if not _SCHEMAS:
        for c in all_crds():
            _SCHEMAS[c["spec"]["names"]["kind"]] = c["spec"]["versions"][0]["schema"][
                "openAPIV3Schema"]
    return _SCHEMAS[kind]


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Fill ``default``s the way the API server does (objects present, fields absent)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _cel(schema: Schema, value: Any, old: Any, path: str, errors: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if is_transition_rule(text) and old is None:
            continue
        if not RULES[text](value, old):
            errors.append(f"{path}: Invalid value: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                o = old.get(name) if isinstance(old, dict) else None
                _cel(sub, value[name], o, f"{path}.{name}", errors)
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _cel(schema["items"], v, None, f"{path}[{i}]", errors)


def validate_custom_resource(obj: dict[str, Any], old: dict[str, Any] | None = None
                             ) -> dict[str, Any]:
    """Defaulted obj if it is valid; InvalidArgument naming every problem otherwise.
    Objects that are not ours pass unchanged."""
    if obj.get("apiVersion") != f"{GROUP}/{VERSION}":
        return obj
    kind = obj.get("kind", "")
    try:
        schema = schema_for(kind)
    except KeyError:
        raise InvalidArgument(f"no kind {kind!r} in {GROUP}/{VERSION}") from None
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    body = apply_defaults(schema, copy.deepcopy(body))
    name = (obj.get("metadata") or {}).get("name", "")
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in jsonschema.Draft202012Validator(_strict(schema)).iter_errors(body)]
    if not errors:
        old_body = None if old is None else {k: v for k, v in old.items() if k in body}
        for key in body:
            sub = schema.get("properties", {}).get(key, {})
            _cel(sub, body[key], None if old_body is None else old_body.get(key), key, errors)
    if errors:
        raise InvalidArgument(f"{kind}.{GROUP} {name!r} is invalid: " + "; ".join(errors))
    return {**obj, **body}
