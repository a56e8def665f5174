"""Pagination of ListVolumes / ListSnapshots: opaque tokens that survive deletions.

A token names the last id of the previous page (not an offset), so deleting or adding
entries between two pages never repeats or skips an entry that existed throughout. It is
base64url text with a version prefix; anything that does not decode is a bad token, which
the spec answers with ABORTED.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TypeVar

from statehold.errors import Aborted, InvalidArgument

T = TypeVar("T")
_PREFIX = "statehold-v1:"


def encode(last_id: str) -> str:
    return base64.urlsafe_b64encode((_PREFIX + last_id).encode()).decode().rstrip("=")


def decode(token: str) -> str:
    """The id a token resumes after; Aborted if it is not one of our tokens."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise Aborted(f"invalid starting_token {token!r}") from exc
    if not raw.startswith(_PREFIX) or len(raw) == len(_PREFIX):
        raise Aborted(f"invalid starting_token {token!r}")
    return raw[len(_PREFIX):]


def page(
    items: Sequence[T], key: Callable[[T], str], max_entries: int, starting_token: str
) -> tuple[list[T], str]:
    """One page of ``items`` (sorted by ``key`` here) and the next token ("" on the last)."""
    if max_entries < 0:
        raise InvalidArgument("max_entries must not be negative")
    ordered = sorted(items, key=key)
    if starting_token:
        after = decode(starting_token)
        ordered = [i for i in ordered if key(i) > after]
    if max_entries == 0 or len(ordered) <= max_entries:
        return ordered, ""
    chosen = ordered[:max_entries]
    return chosen, encode(key(chosen[-1]))
