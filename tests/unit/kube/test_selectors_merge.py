"""Label selectors and JSON merge patch: the two pieces of API semantics the in-memory
facade implements itself, property-tested."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statehold.errors import InvalidArgument
from statehold.kube import selectors
from statehold.kube.merge import merge_patch

keys = st.sampled_from(["app", "tier", "statehold.io/node", "backup"])
values = st.sampled_from(["a", "b", "db", "n-1"])
labels = st.dictionaries(keys, values, max_size=4)


@given(wanted=labels, have=labels)
def test_equality_selector_matches_iff_subset(wanted: dict[str, str], have: dict[str, str]) -> None:
    expected = all(have.get(k) == v for k, v in wanted.items())
    assert selectors.matches(wanted, have) == expected
    assert selectors.matches(selectors.render(wanted), have) == expected


@given(have=labels, key=keys, vals=st.sets(values, min_size=1, max_size=3))
def test_set_selectors(have: dict[str, str], key: str, vals: set[str]) -> None:
    listed = ",".join(sorted(vals))
    assert selectors.matches(f"{key} in ({listed})", have) == (have.get(key) in vals)
    assert selectors.matches(f"{key} notin ({listed})", have) == (have.get(key) not in vals)
    assert selectors.matches(key, have) == (key in have)
    assert selectors.matches(f"!{key}", have) == (key not in have)


def test_label_selector_object_to_string() -> None:
    sel = {"matchLabels": {"app": "db"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["a", "b"]},
        {"key": "old", "operator": "DoesNotExist"}]}
    text = selectors.from_label_selector(sel)
    assert text == "app=db,tier in (a,b),!old"
    assert selectors.matches(text, {"app": "db", "tier": "b"})
    assert not selectors.matches(text, {"app": "db", "tier": "b", "old": "x"})
    with pytest.raises(InvalidArgument):
        selectors.from_label_selector({"matchExpressions": [{"key": "k", "operator": "Near"}]})


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3),
                           lambda inner: st.dictionaries(st.text(max_size=2), inner, max_size=3),
                           max_leaves=8)
objects = st.dictionaries(st.text(max_size=2), json_values, max_size=4)


def no_nulls(v: Any) -> Any:
    return {k: no_nulls(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v


@given(target=objects, patch=objects)
def test_merge_patch_rfc7386_properties(target: dict[str, Any], patch: dict[str, Any]) -> None:
    out = merge_patch(target, patch)
    assert merge_patch(out, patch) == out                 # idempotent
    assert merge_patch(target, {}) == target              # empty patch changes nothing
    for k, v in patch.items():
        if v is None:
            assert k not in out                           # null deletes
        elif not isinstance(v, dict):
            assert out[k] == v                            # scalars replace
    assert all(out[k] == target[k] for k in target if k not in patch)
    copy_before = repr(target)
    merge_patch(target, patch)
    assert repr(target) == copy_before                    # inputs untouched
    assert merge_patch({}, patch) == no_nulls(patch)     # onto nothing: the patch minus nulls
