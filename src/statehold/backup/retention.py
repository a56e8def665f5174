"""Which backups a retention policy keeps (format §9): a pure function, table-tested.

Per volume, newest first: ``keep_last`` keeps the N newest; each calendar rule keeps the
newest backup of each of the N most recent periods (UTC hour, day, ISO week, month) that
have a backup. A backup kept by any rule is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from statehold.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Policy:
    keep_last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def empty(self) -> bool:
        return not any((self.keep_last, self.hourly, self.daily, self.weekly, self.monthly))


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
)


def apply(policy: Policy, items: Sequence[Item]) -> Decision:
    if policy.empty():
        raise InvalidArgument("a retention policy must keep something (keep-last, hourly, daily, weekly "
                              "or monthly); refusing to remove every backup")
    for name in ("keep_last", "hourly", "daily", "weekly", "monthly"):
        if getattr(policy, name) < 0:
            raise InvalidArgument(f"retention {name} must not be negative")
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
    remove = [it.backup_id for it in items if it.backup_id not in keep]
    return Decision(keep, sorted(remove))
