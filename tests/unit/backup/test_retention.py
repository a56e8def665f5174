"""Retention policy: table tests of which backups each rule keeps."""

from __future__ import annotations

import calendar

import pytest

from statehold.backup.retention import Item, Policy, apply
from statehold.errors import InvalidArgument


def t(stamp: str) -> float:
    """'2026-11-25 13' -> epoch seconds (UTC), minutes optional."""
    parts = stamp.replace("-", " ").replace(":", " ").split()
    y, mo, d, h, mi = ([int(p) for p in parts] + [0, 0])[:5]
    return float(calendar.timegm((y, mo, d, h, mi, 0, 0, 0, 0)))


SERIES = [Item(f"b{i:02d}", "p/v", t(s)) for i, s in enumerate([
    "2026-09-30 23", "2026-10-15 10", "2026-10-31 08", "2026-11-01 09",
    "2026-11-20 10", "2026-11-24 10", "2026-11-24 22", "2026-11-25 10:05",
    "2026-11-25 10:40", "2026-11-25 11:00",
])]


@pytest.mark.parametrize(("policy", "kept"), [
    (Policy(keep_last=1), ["b09"]),
    (Policy(keep_last=3), ["b07", "b08", "b09"]),
    (Policy(keep_last=100), [f"b{i:02d}" for i in range(10)]),
    (Policy(hourly=2), ["b08", "b09"]),          # 11:00 and the newest of the 10:xx hour
    (Policy(daily=2), ["b06", "b09"]),           # newest of 11-25, newest of 11-24
    (Policy(daily=3), ["b04", "b06", "b09"]),
    (Policy(weekly=2), ["b04", "b09"]),          # ISO weeks 48 (11-24..) and 47 (11-20)
    (Policy(monthly=3), ["b00", "b02", "b09"]),  # Nov, Oct, Sep
    (Policy(keep_last=1, monthly=2), ["b02", "b09"]),
    (Policy(daily=1, weekly=1, monthly=1), ["b09"]),
])
def test_policy_keeps_exactly(policy: Policy, kept: list[str]) -> None:
    decision = apply(policy, SERIES)
    assert sorted(decision.keep) == kept
    assert sorted(decision.remove) == sorted(set(i.backup_id for i in SERIES) - set(kept))


def test_each_volume_is_judged_on_its_own() -> None:
    items = [Item("a1", "p/a", t("2026-11-01 00")), Item("a2", "p/a", t("2026-11-02 00")),
             Item("b1", "p/b", t("2026-10-01 00"))]
    assert apply(Policy(keep_last=1), items).remove == ["a1"]


def test_reasons_are_reported() -> None:
    assert apply(Policy(keep_last=1, daily=1), SERIES).keep["b09"] == ["last", "daily"]


@pytest.mark.parametrize("policy", [Policy(), Policy(keep_last=-1, daily=1)])
def test_a_policy_that_keeps_nothing_is_refused(policy: Policy) -> None:
    with pytest.raises(InvalidArgument):
        apply(policy, SERIES)
