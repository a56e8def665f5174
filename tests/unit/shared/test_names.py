"""Names become path components: traversal is refused before any filesystem call."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.errors import InvalidArgument
from statehold.shared.names import format_size, parse_size, validate_name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("..", ".."),
        ("../etc", "traversal"),
        ("a/../../b", "traversal"),
        ("/etc/passwd", "absolute"),
        ("a/b", "separator"),
        ("a..b", ".."),
        ("", "non-empty"),
        ("UPPER", "DNS-1123"),
        ("-lead", "DNS-1123"),
        ("trail-", "DNS-1123"),
        (".hidden", "DNS-1123"),
        ("a\x00b", "NUL"),
        ("a b", "DNS-1123"),
        ("x" * 254, "at most"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "pvc-0f1e2d3c", "data.v1", "x" * 253, "0abc"])
def test_dns1123_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10Gi", 10 * 1024**3), ("512M", 512 * 1000**2), ("1.5Gi", 3 * 512 * 1024**2),
     ("1048576", 1048576), (4096, 4096), ("10Mi", 10 * 1024**2), ("2k", 2000)],
)
def test_sizes_parse(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["ten", "-5", "10Zi", "", "1 0G"])
def test_bad_sizes_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_negative_int_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        parse_size(-1)


def test_format_size_uses_binary_units() -> None:
    assert format_size(10 * 1024**3) == "10.0Gi"
    assert format_size(512) == "512B"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab0.-/\\~ \x00A_"), max_size=12) | st.text(max_size=12))
def test_an_accepted_name_is_always_one_child_of_the_root(name: str) -> None:
    try:
        validate_name(name)
    except InvalidArgument:
        return
    root = "/srv/share"
    joined = os.path.normpath(os.path.join(root, name))
    assert os.path.dirname(joined) == root and os.path.basename(joined) == name
