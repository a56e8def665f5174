"""What a volume's I/O may use: its limits, where they come from, how they are written.

A volume's limits are four rates, each 0 for "no limit": read and write operations per
second, read and write bytes per second. They come from one of two places:

* **the class**: the StorageClass parameters (``readIOPS``, ``writeIOPS``,
  ``readBytesPerSecond``, ``writeBytesPerSecond``) given at creation, kept as the volume's
  labels ``statehold.io/qos-*`` (so a retried CreateVolume, the CLI and the node agent read
  the same values, and they travel with the pool);
* **an override**: set later, per volume (``statehold volume limits``, or the PVC
  annotations the node agent follows), kept in ``<home>/qos/<pool>/<volume>.json`` with the
  volume's creation time so that a new volume reusing the name never inherits it. An
  override replaces the class limits whole until it is cleared.

The kernel mechanism that enforces them is :mod:`statehold.engine.throttle`. Burst
parameters are refused, not ignored: the kernel's throttle (``io.max``,
``blkio.throttle.*``) is a flat rate with no burst allowance, and a class asking for one
should not silently get something else.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from statehold.engine.types import Volume
from statehold.errors import InvalidArgument

FIELDS = ("read_iops", "write_iops", "read_bps", "write_bps")

PARAMETERS: dict[str, str] = {
    "readIOPS": "read_iops",
    "writeIOPS": "write_iops",
    "readBytesPerSecond": "read_bps",
    "writeBytesPerSecond": "write_bps",
}
"""StorageClass parameter -> field."""

BURST_PARAMETERS = ("readIOPSBurst", "writeIOPSBurst", "readBytesPerSecondBurst",
                    "writeBytesPerSecondBurst", "burstSeconds")
"""Refused with InvalidArgument (see the module docstring)."""

LABELS: dict[str, str] = {f: f"statehold.io/qos-{f.replace('_', '-')}" for f in FIELDS}
"""Field -> engine volume label (``statehold.io/qos-write-iops``...)."""

MAX_IOPS = 2**31 - 1
"""The kernel keeps an IOPS limit in an unsigned int whose top value means "none"."""
MAX_BPS = 2**62
"""Far above any device; the kernel keeps bytes per second in a u64."""

_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]i|[kMGTP])?(?:B|/s|B/s)?")
_SUFFIX = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-volume rates; 0 is "no limit"."""

    read_iops: int = 0
    write_iops: int = 0
    read_bps: int = 0
    write_bps: int = 0

    @property
    def unlimited(self) -> bool:
        return not any(self.values())

    def values(self) -> tuple[int, int, int, int]:
        return (self.read_iops, self.write_iops, self.read_bps, self.write_bps)

    def items(self) -> Iterator[tuple[str, int]]:
        return zip(FIELDS, self.values(), strict=True)

    def split(self, parts: int) -> Limits:
        """Each limit divided among ``parts`` users (rounded down, at least 1): what each of
        them gets when the kernel can only limit them one by one (cgroup v1)."""
        if parts <= 1:
            return self
        return Limits(*(max(1, v // parts) if v else 0 for v in self.values()))

    def labels(self) -> dict[str, str]:
        return {LABELS[f]: str(v) for f, v in self.items() if v}

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Limits:
        """The class limits recorded on a volume (labels we wrote; anything else is 0)."""
        values = []
        for f in FIELDS:
            raw = labels.get(LABELS[f], "0")
            values.append(int(raw) if raw.isdigit() else 0)
        return cls(*values)

    def text(self) -> str:
        """``read 100 IOPS, write 20 MiB/s`` or ``unlimited``."""
        parts = []
        for name, iops, bps in (("read", self.read_iops, self.read_bps),
                                ("write", self.write_iops, self.write_bps)):
            rates = ([f"{iops} IOPS"] if iops else []) + ([_rate(bps)] if bps else [])
            if rates:
                parts.append(f"{name} {' + '.join(rates)}")
        return ", ".join(parts) or "unlimited"


def _rate(bps: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if bps >= size:
            value = bps / size
            return f"{value:.0f} {unit}/s" if value == int(value) else f"{value:.1f} {unit}/s"
    return f"{bps} B/s"


def parse_value(name: str, text: str, *, rate_of_bytes: bool) -> int:
    """One limit: a whole number of IOPS, or bytes per second as an integer or a quantity
    (``20Mi``, ``20MiB/s``, ``1.5G``); ``0`` or empty is "no limit"."""
    text = text.strip()
    if not text:
        return 0
    if not rate_of_bytes:
        if not text.isdigit():
            raise InvalidArgument(f"parameter {name}={text!r} must be a whole number of IOPS")
        value = int(text)
        top = MAX_IOPS
    else:
        match = _QUANTITY.fullmatch(text)
        if match is None:
            raise InvalidArgument(f"parameter {name}={text!r} must be bytes per second: an "
                                  "integer or a quantity like 20Mi or 100M")
        try:
            value = int(Decimal(match.group(1)) * _SUFFIX[match.group(2)])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise InvalidArgument(f"parameter {name}={text!r} is not a number") from exc
        top = MAX_BPS
    if value > top:
        raise InvalidArgument(f"parameter {name}={text!r} is above the largest limit {top}")
    return value


def parse_parameters(parameters: Mapping[str, str]) -> Limits:
    """The limits a StorageClass asks for (all 0 when it names none); InvalidArgument for a
    malformed value or a burst parameter."""
    for key in BURST_PARAMETERS:
        if key in parameters:
            raise InvalidArgument(
                f"parameter {key} is not supported: the kernel's block throttle (io.max, "
                "blkio.throttle) is a flat rate with no burst allowance")
    values = {field: parse_value(key, parameters.get(key, ""), rate_of_bytes=field.endswith("bps"))
              for key, field in PARAMETERS.items()}
    return Limits(**values)


def parse_settings(settings: Mapping[str, str]) -> Limits:
    """Limits from ``field=value`` pairs (``write_iops=500``, ``write_bps=20Mi``), the form
    the CLI and the PVC annotations use; unknown names are InvalidArgument."""
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown limit {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return Limits(**{f: parse_value(f, v, rate_of_bytes=f.endswith("bps"))
                     for f, v in settings.items()})


Source = Literal["override", "class", "none"]


@dataclass(frozen=True, slots=True)
class Configured:
    """A volume's limits and where they come from."""

    limits: Limits
    source: Source


class Overrides:
    """Per-volume overrides of this node, ``<home>/qos/<pool>/<volume>.json``.

    Each file holds the limits and the volume's ``created_at``: an override is the volume's
    only while that matches, so deleting a volume and creating another with its name starts
    from the class limits again. Writes are atomic (temporary file, rename)."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "qos"

    def _path(self, vol: Volume) -> Path:
        return self.root / vol.pool / f"{vol.name}.json"

    def _data(self, vol: Volume) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(vol).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("created_at") != vol.created_at:
            return None
        return data

    def get(self, vol: Volume) -> Limits | None:
        data = self._data(vol)
        if data is None:
            return None
        limits = data.get("limits") or {}
        return Limits(**{f: int(limits.get(f, 0)) for f in FIELDS})

    def origin(self, vol: Volume) -> str | None:
        """Who set the override: ``cli`` or ``annotation`` (the node agent, from the
        claim); each clears only its own."""
        data = self._data(vol)
        return None if data is None else str(data.get("origin", "cli"))

    def put(self, vol: Volume, limits: Limits, *, origin: str = "cli") -> None:
        path = self._path(vol)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"volume": vol.id, "created_at": vol.created_at, "origin": origin,
                "limits": {f.name: getattr(limits, f.name) for f in fields(limits)}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self, vol: Volume) -> bool:
        """Remove the volume's override; True if there was one."""
        had = self.get(vol) is not None
        self._path(vol).unlink(missing_ok=True)
        return had


def configured(vol: Volume, overrides: Overrides) -> Configured:
    """The limits the volume should have now: its override, else its class limits."""
    override = overrides.get(vol)
    if override is not None:
        return Configured(override, "override")
    from_class = Limits.from_labels(vol.labels)
    return Configured(from_class, "none" if from_class.unlimited else "class")
