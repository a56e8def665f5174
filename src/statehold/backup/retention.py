"""Which backups a retention policy keeps (format §9): a pure function, table-tested and
property-tested.

Per volume, newest first: ``keep_last`` keeps the N newest; each calendar rule keeps the
newest backup of each of the N most recent periods (UTC hour, day, ISO week, month, year)
that have a backup; ``within`` keeps every backup made within that many seconds of the
volume's newest one (relative to the newest, not to now, so a volume whose backups stopped
keeps them). A backup kept by any rule is kept. Every policy that keeps something keeps the
newest backup of each volume.

Which backups a policy is shown is the caller's choice: a schedule shows only the backups
it made (their manifests' ``origin``), so it never removes anyone else's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from statehold.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Policy:
    keep_last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0
    """Seconds: keep every backup at most this much older than the volume's newest."""

    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def check(self) -> None:
        """InvalidArgument for a negative rule or a policy that keeps nothing."""
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise InvalidArgument(f"retention {f.name} must not be negative")
        if self.empty():
            raise InvalidArgument("a retention policy must keep something (keep-last, hourly, "
                                  "daily, weekly, monthly, yearly or within); refusing to "
                                  "remove every backup")


@dataclass(frozen=True, slots=True)
class Item:
    backup_id: str
    volume: str
    created: float


@dataclass(frozen=True, slots=True)
class Decision:
    keep: dict[str, list[str]]
    """backup id -> the rules that keep it."""
    remove: list[str]


def _period(fmt: str) -> Callable[[float], str]:
    return lambda t: time.strftime(fmt, time.gmtime(t))


_RULES: tuple[tuple[str, Callable[[float], str]], ...] = (
    ("hourly", _period("%Y-%m-%dT%H")),
    ("daily", _period("%Y-%m-%d")),
    ("weekly", _period("%G-W%V")),
    ("monthly", _period("%Y-%m")),
    ("yearly", _period("%Y")),
)

_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:[0-9]+[hdw])+")


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``36h``, ``14d``, ``2w3d`` (hours, days of 24 h,
    weeks); InvalidArgument for anything else (a month or a year has no fixed length)."""
    if not _DURATION.fullmatch(text):
        raise InvalidArgument(f"duration {text!r} must be numbers with units h, d or w "
                              "(e.g. 36h, 14d, 2w)")
    return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)([hdw])", text)))


def apply(policy: Policy, items: Sequence[Item]) -> Decision:
    policy.check()
    keep: dict[str, list[str]] = {}
    by_volume: dict[str, list[Item]] = {}
    for it in items:
        by_volume.setdefault(it.volume, []).append(it)
    for group in by_volume.values():
        group.sort(key=lambda i: (i.created, i.backup_id), reverse=True)
        for it in group[: policy.keep_last]:
            keep.setdefault(it.backup_id, []).append("last")
        for name, period in _RULES:
            n = getattr(policy, name)
            seen: set[str] = set()
            for it in group:
                if len(seen) >= n:
                    break
                p = period(it.created)
                if p not in seen:
                    seen.add(p)
                    keep.setdefault(it.backup_id, []).append(name)
        if policy.within > 0:
            since = group[0].created - policy.within
            for it in group:
                if it.created < since:
                    break
                keep.setdefault(it.backup_id, []).append("within")
    remove = [it.backup_id for it in items if it.backup_id not in keep]
    return Decision(keep, sorted(remove))
