"""Kubernetes resource quantities (``10Gi``, ``500M``, ``1e9``) as whole bytes."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from statehold.errors import InvalidArgument

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_RE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?)\s*$")


def parse_quantity(value: object) -> int:
    """Bytes (rounded up) of a quantity given as a string or a number.

    Raises InvalidArgument for anything else, including negative sizes.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"not a quantity: {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(str(value))
    elif isinstance(value, str):
        m = _RE.match(value)
        if m is None:
            raise InvalidArgument(f"not a quantity: {value!r}")
        digits, exponent, suffix = m.groups()
        try:
            number = Decimal(digits)
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
            raise InvalidArgument(f"not a quantity: {value!r}") from exc
        if exponent:
            number = number.scaleb(int(exponent[1:]))
        elif suffix == "m":
            number = number / 1000
        elif suffix:
            number = number * _SUFFIX[suffix]
    else:
        raise InvalidArgument(f"not a quantity: {value!r}")
    if number < 0:
        raise InvalidArgument(f"negative quantity: {value!r}")
    return int(number.to_integral_value(rounding=ROUND_CEILING))
