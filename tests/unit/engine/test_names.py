"""Names and sizes: what users type is checked before anything touches a disk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statehold.engine.names import MAX_SIZE, parse_size, round_up_mib, validate_name
from statehold.engine.types import GiB, MiB
from statehold.errors import InvalidArgument


@pytest.mark.parametrize("name", ["a", "db-0", "pvc-1234abcd", "x" * 63, "0", "a-b-c"])
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a_b", "-a", "a-", "../etc", "a/b", ".", "..", ".hidden", "x" * 64, "a b", "é",
     "a.b", "a\x00"],
)
def test_invalid_names_are_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_non_string_name_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        validate_name(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10Gi", 10 * GiB),
        ("512Mi", 512 * MiB),
        ("1G", round_up_mib(10**9)),
        ("512M", round_up_mib(512 * 10**6)),
        ("1.5Gi", 1536 * MiB),
        ("4096", MiB),
        ("1048576", MiB),
        ("1048577", 2 * MiB),
        ("1Ki", MiB),
        (" 2Gi ", 2 * GiB),
        (3 * MiB + 1, 4 * MiB),
    ],
)
def test_sizes_parse_and_round_up_to_a_mib(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected
    assert parse_size(text) % MiB == 0


@pytest.mark.parametrize(
    "text", ["", "0", "-1", "-1Gi", "1Xi", "Gi", "1e9", "ten", "1..5Gi", "0Mi", True, 0, -5, 1.5,
             str(MAX_SIZE * 2)],
)
def test_bad_sizes_are_invalid_argument(text: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_any_positive_byte_count_rounds_up_to_the_next_mib(n: int) -> None:
    got = parse_size(n)
    assert got % MiB == 0 and n <= got < n + MiB
    assert parse_size(str(n)) == got


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True))
def test_every_dns_label_is_accepted_and_is_a_safe_file_name(name: str) -> None:
    assert validate_name(name) == name
    assert "/" not in name and not name.startswith(".")
