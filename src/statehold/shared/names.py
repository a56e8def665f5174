"""Validation of volume and snapshot names, and parsing of sizes.

A name becomes a path component under the shared root, so anything that could leave the
root (``..``, ``/``, an absolute path, NUL) is refused before any filesystem call, with
its own message: a user who typed ``../x`` should learn it was the traversal that was
refused, not that the name was too long.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from statehold.errors import InvalidArgument

MAX_NAME = 253
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]i?|[kmgtpe]|)[bB]?\s*$")
_UNITS = {
    "": 1,
    "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5, "E": 1000**6,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6,
}


def validate_name(name: str, *, what: str = "volume") -> str:
    """Return ``name`` if it is a safe DNS-1123 name; InvalidArgument otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} name must be a non-empty string")
    if "\x00" in name:
        raise InvalidArgument(f"{what} name {name!r} contains NUL")
    if name.startswith("/"):
        raise InvalidArgument(f"{what} name {name!r} is an absolute path; a name is one path component")
    if name == "." or ".." in name:
        raise InvalidArgument(f"{what} name {name!r} contains '..' (path traversal)")
    if "/" in name or "\\" in name:
        raise InvalidArgument(f"{what} name {name!r} contains a path separator")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"{what} name is {len(name)} characters; at most {MAX_NAME}")
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{what} name {name!r} is not a DNS-1123 name (lowercase letters, digits, '-', '.'; "
            "starting and ending with a letter or digit)"
        )
    return name


def case_clashes(paths: Iterable[str]) -> list[tuple[str, ...]]:
    """Paths (``a/b/c``, relative) that name one file on a case-insensitive filesystem:
    siblings equal but for case (``README`` and ``readme``), each group sorted, groups in
    order. Two such files restored onto an SMB share would become one, silently; callers
    refuse instead. Volume and snapshot names cannot clash (they are lowercase DNS names);
    the files inside a backup can."""
    groups: dict[str, set[str]] = {}
    for path in paths:
        parent, _, leaf = path.rpartition("/")
        # The parent is folded too: children of two clashing directories land in one.
        groups.setdefault(f"{parent.casefold()}/{leaf.casefold()}", set()).add(path)
    return sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)


def parse_size(value: str | int) -> int:
    """Bytes from ``10Gi``, ``512M``, ``1.5G`` or a plain integer; InvalidArgument if not."""
    if isinstance(value, bool):
        raise InvalidArgument(f"size {value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"size {value} is negative")
        return value
    match = _SIZE.match(value)
    if not match:
        raise InvalidArgument(f"size {value!r} is not a size (e.g. 10Gi, 512M, 1048576)")
    number, unit = match.groups()
    if unit in ("m", "g", "t", "p", "e"):
        unit = unit.upper()
    return int(float(number) * _UNITS[unit])


def format_size(size: int) -> str:
    """Human form used in messages and the CLI (binary units, one decimal)."""
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"
