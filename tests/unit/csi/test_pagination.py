"""Pagination tokens: stable under deletion, bad tokens ABORTED."""

from __future__ import annotations

import pytest

from statehold.csi import pagination
from statehold.errors import Aborted, InvalidArgument


def ids(n: int) -> list[str]:
    return [f"p/v{i:02d}" for i in range(n)]


def test_walk_returns_every_entry_once() -> None:
    items, token, seen = ids(7), "", []
    while True:
        page, token = pagination.page(items, str, 3, token)
        seen += page
        if not token:
            break
    assert seen == sorted(items)


def test_deleting_between_pages_neither_repeats_nor_skips() -> None:
    items = ids(6)
    first, token = pagination.page(items, str, 2, "")
    items.remove(first[0])  # already returned
    items.remove("p/v03")  # not yet returned: gone, fine
    rest, token2 = pagination.page(items, str, 0, token)
    assert rest == ["p/v02", "p/v04", "p/v05"] and token2 == ""


def test_max_entries_zero_means_all() -> None:
    assert pagination.page(ids(3), str, 0, "") == (sorted(ids(3)), "")


@pytest.mark.parametrize("token", ["invalid-token", "!!!", "c3RhdGVob2xkLXYxOg", "aGVsbG8"])
def test_bad_token_is_aborted(token: str) -> None:
    with pytest.raises(Aborted):
        pagination.page(ids(3), str, 1, token)


def test_negative_max_entries_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        pagination.page(ids(3), str, -1, "")
