"""Retention policy: table tests of which backups each rule keeps, and properties that
hold for any policy and any series of backups (hypothesis)."""

from __future__ import annotations

import calendar
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.backup.retention import Item, Policy, apply, parse_duration
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
    (Policy(yearly=1), ["b09"]),
    (Policy(yearly=2), ["b09"]),                 # every backup is of 2026
    (Policy(within=3600.0), ["b07", "b08", "b09"]),  # 10:00..11:00 of 11-25, ends included
    (Policy(within=parse_duration("1d")), ["b06", "b07", "b08", "b09"]),
    (Policy(keep_last=1, within=60.0), ["b09"]),
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


def test_yearly_keeps_the_newest_of_each_year() -> None:
    items = [Item("y24", "p/v", t("2024-12-31 23")), Item("y25a", "p/v", t("2025-01-01 00")),
             Item("y25b", "p/v", t("2025-06-01 00")), Item("y26", "p/v", t("2026-02-01 00"))]
    assert sorted(apply(Policy(yearly=2), items).keep) == ["y25b", "y26"]
    assert sorted(apply(Policy(yearly=5), items).keep) == ["y24", "y25b", "y26"]


def test_within_counts_from_the_newest_backup_not_from_now() -> None:
    """Backups that stopped a year ago are not all removed by keepWithin."""
    items = [Item("old", "p/v", t("2020-01-01 00")), Item("new", "p/v", t("2020-01-02 00")),
             Item("newest", "p/v", t("2020-01-03 00"))]
    assert apply(Policy(within=parse_duration("36h")), items).remove == ["old"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600), ("36h", 36 * 3600), ("14d", 14 * 86400), ("2w", 14 * 86400),
    ("1w2d3h", 9 * 86400 + 3 * 3600),
])
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1m", "1y", "d", "-1d", "1.5d", "1d ", "P1D"])
def test_other_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


# -- properties ------------------------------------------------------------------------------

START = t("2024-01-01 00")
SPAN = 3 * 366 * 86400.0  # three years: every calendar rule meets several periods

counts = st.integers(min_value=0, max_value=6)
policies = st.builds(Policy, keep_last=counts, hourly=counts, daily=counts, weekly=counts,
                     monthly=counts, yearly=counts,
                     within=st.sampled_from([0.0, 3600.0, 86400.0, 30 * 86400.0])
                     ).filter(lambda p: not p.empty())
series = st.lists(st.tuples(st.sampled_from(["p/a", "p/b", "q/c"]),
                            st.floats(min_value=START, max_value=START + SPAN,
                                      allow_nan=False, allow_infinity=False)),
                  min_size=0, max_size=40)
RULES = ("keep_last", "hourly", "daily", "weekly", "monthly", "yearly")


def items_of(raw: list[tuple[str, float]]) -> list[Item]:
    return [Item(f"b{i:03d}", volume, created) for i, (volume, created) in enumerate(raw)]


def newest(items: list[Item], volume: str) -> Item:
    return max((i for i in items if i.volume == volume), key=lambda i: (i.created, i.backup_id))


@settings(max_examples=300, deadline=None)
@given(policies, series)
def test_every_backup_is_kept_or_removed_and_the_newest_of_each_volume_is_kept(
        policy: Policy, raw: list[tuple[str, float]]) -> None:
    items = items_of(raw)
    d = apply(policy, items)
    ids = {i.backup_id for i in items}
    assert set(d.keep) | set(d.remove) == ids and not set(d.keep) & set(d.remove)
    assert d.remove == sorted(d.remove)
    for volume in {i.volume for i in items}:
        assert newest(items, volume).backup_id in d.keep


@settings(max_examples=300, deadline=None)
@given(policies, series, st.sampled_from((*RULES, "within")), st.integers(1, 5))
def test_a_larger_policy_keeps_everything_a_smaller_one_kept(
        policy: Policy, raw: list[tuple[str, float]], rule: str, more: int) -> None:
    items = items_of(raw)
    bigger = replace(policy, **{rule: getattr(policy, rule) + (more * 3600.0 if rule == "within"
                                                               else more)})
    assert set(apply(policy, items).keep) <= set(apply(bigger, items).keep)


@settings(max_examples=300, deadline=None)
@given(policies, series.filter(bool), st.floats(min_value=1.0, max_value=400 * 86400.0))
def test_a_removed_backup_stays_removed_when_a_newer_one_comes(
        policy: Policy, raw: list[tuple[str, float]], later: float) -> None:
    """What a prune removed, the next prune after another backup would remove too: the
    decision never brings a backup back, so prune after each backup is consistent."""
    items = items_of(raw)
    volume = items[0].volume
    removed = set(apply(policy, items).remove)
    items.append(Item("z-new", volume, newest(items, volume).created + later))
    assert removed <= set(apply(policy, items).remove)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10), series)
def test_keep_last_keeps_exactly_the_newest_n_of_each_volume(n: int, raw: list[tuple[str, float]]) -> None:
    items = items_of(raw)
    kept = set(apply(Policy(keep_last=n), items).keep)
    for volume in {i.volume for i in items}:
        mine = sorted((i for i in items if i.volume == volume),
                      key=lambda i: (i.created, i.backup_id), reverse=True)
        assert {i.backup_id for i in mine[:n]} == kept & {i.backup_id for i in mine}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([3600.0, 86400.0, 7 * 86400.0]), series.filter(bool))
def test_within_keeps_exactly_the_window_below_the_newest(within: float,
                                                          raw: list[tuple[str, float]]) -> None:
    items = items_of(raw)
    kept = set(apply(Policy(within=within), items).keep)
    for i in items:
        assert (i.backup_id in kept) == (i.created >= newest(items, i.volume).created - within)
