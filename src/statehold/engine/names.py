"""Validation of user-supplied names and sizes.

Names become file names inside a pool (``volumes/<name>.img``), so they are checked before
anything touches the disk: a DNS-1123 label (what Kubernetes accepts for most object names)
cannot hold a ``/``, a ``..`` or a leading dot, which rules out path traversal by
construction. Sizes follow Kubernetes quantity habits (``10Gi`` binary, ``10G`` decimal,
plain bytes) and are rounded up to a whole MiB so that every backing file is a multiple of
the loop device's 4096-byte logical block.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from statehold.errors import InvalidArgument

MiB = 1024 * 1024

MAX_NAME = 63
MAX_SIZE = 1 << 60
"""1 EiB: far beyond any pool, small enough that arithmetic on it never overflows a C off_t."""

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}


def validate_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is a DNS-1123 label (1-63 of ``a-z0-9-``, alphanumeric ends).

    Raises InvalidArgument otherwise; the message names the offending value.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"{what} {name[:70]!r} is longer than {MAX_NAME} characters")
    if _LABEL.fullmatch(name) is None:
        raise InvalidArgument(
            f"{what} {name!r} is not a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def round_up_mib(size: int) -> int:
    """Round a byte count up to the next multiple of 1 MiB."""
    return -(-size // MiB) * MiB


def check_size(size: int, *, what: str = "size") -> int:
    """Validate a byte count and return it rounded up to 1 MiB (InvalidArgument if bad)."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidArgument(f"{what} must be an integer number of bytes, got {size!r}")
    if size <= 0:
        raise InvalidArgument(f"{what} must be positive, got {size}")
    if size > MAX_SIZE:
        raise InvalidArgument(f"{what} {size} is larger than the maximum {MAX_SIZE}")
    return round_up_mib(size)


def parse_size(value: str | int) -> int:
    """Parse ``"10Gi"``, ``"512Mi"``, ``"1G"``, ``"4096"`` or an int; round up to 1 MiB.

    Binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei) are powers of 1024, decimal ones (k, M, G, T,
    P, E) powers of 1000, as in Kubernetes quantities. Fractions are allowed ("1.5Gi").
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return check_size(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"size must be a string or an integer, got {value!r}")
    match = _QUANTITY.fullmatch(value)
    if match is None or match.group(2) not in _SUFFIXES:
        raise InvalidArgument(f"size {value!r} is not a quantity like 10Gi, 512Mi, 1G or 4096")
    try:
        amount = Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise InvalidArgument(f"size {value!r} is not a number") from exc
    whole = int(amount.to_integral_value(rounding="ROUND_CEILING"))
    return check_size(whole, what=f"size {value!r}")
