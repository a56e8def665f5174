"""Table tests of the operator's pure decisions (no cluster, no root)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from statehold.controller import locate as loc
from statehold.controller.conditions import set_condition
from statehold.controller.pools import plan_pool
from statehold.controller.problems import Problem, backoff
from statehold.controller.restores import choose_pool
from statehold.controller.schedules import backup_name, due, parse_cron, to_prune
from statehold.engine.types import GiB, RaidProfile


def t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def test_driver_and_topology_key_match_the_csi_plugin() -> None:
    from statehold.csi.backend import TOPOLOGY_KEY
    from statehold.csi.identity import DRIVER_NAME

    assert (loc.DRIVER, loc.TOPOLOGY_KEY) == (DRIVER_NAME, TOPOLOGY_KEY)


@pytest.mark.parametrize("expr", ["0 3 * * *", "*/15 * * * 1-5", "0 0 1 * *", "30 2 * * sun"])
def test_valid_cron_is_accepted(expr: str) -> None:
    assert parse_cron(expr) == expr


@pytest.mark.parametrize("expr", ["61 * * * *", "* * *", "every day", "0 3 * * * *", "0 25 * * *",
                                  "@daily"])
def test_invalid_cron_is_a_permanent_invalid_schedule(expr: str) -> None:
    with pytest.raises(Problem) as exc:
        parse_cron(expr)
    assert exc.value.reason == "InvalidSchedule" and exc.value.permanent


@pytest.mark.parametrize(("last", "now", "run", "nxt"), [
    ("2026-01-05 02:00", "2026-01-05 02:59", None, "2026-01-05 03:00"),
    ("2026-01-05 02:00", "2026-01-05 03:00", "2026-01-05 03:00", "2026-01-06 03:00"),
    ("2026-01-05 03:00", "2026-01-05 03:30", None, "2026-01-06 03:00"),
    # operator down for three days: one run, for the latest missed slot
    ("2026-01-05 03:00", "2026-01-08 12:00", "2026-01-08 03:00", "2026-01-09 03:00"),
])
def test_due_runs_the_latest_missed_slot_once(last: str, now: str, run: str | None, nxt: str) -> None:
    timing = due("0 3 * * *", t(last), t(now))
    assert timing.run_at == (t(run) if run else None)
    assert timing.next_at == t(nxt)


def test_backup_names_are_deterministic_and_bounded() -> None:
    slot = t("2026-01-05 03:00")
    assert backup_name("nightly", "data-pg-0", slot) == "nightly-data-pg-0-202601050300"
    long = backup_name("s" * 200, "p" * 200, slot)
    assert len(long) <= 253 and long.endswith("-202601050300")
    assert long == backup_name("s" * 200, "p" * 200, slot)


def vb(name: str, phase: str, done: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": done or "2026-01-01T00:00:00Z"},
            "status": {"phase": phase, "completionTime": done}}


@pytest.mark.parametrize(("backups", "keep", "pruned"), [
    ([], 3, []),
    ([vb("a", "Completed", "2026-01-01T03:00:00Z"), vb("b", "Completed", "2026-01-02T03:00:00Z")], 3, []),
    ([vb("a", "Completed", "2026-01-01T03:00:00Z"), vb("b", "Completed", "2026-01-02T03:00:00Z"),
      vb("c", "Completed", "2026-01-03T03:00:00Z")], 2, ["a"]),
    ([vb("a", "Completed", "2026-01-01T03:00:00Z"), vb("r", "Running"), vb("p", "Pending")], 1, []),
    ([vb("f", "Failed", "2026-01-01T03:00:00Z"), vb("b", "Completed", "2026-01-02T03:00:00Z")], 1, ["f"]),
    ([vb("b", "Completed", "2026-01-02T03:00:00Z"), vb("f", "Failed", "2026-01-03T03:00:00Z")], 1, []),
    # nothing ever completes (e.g. a PVC of another driver): failures do not pile up
    ([vb("f1", "Failed", "2026-01-01T03:00:00Z"), vb("f2", "Failed", "2026-01-02T03:00:00Z"),
      vb("f3", "Failed", "2026-01-03T03:00:00Z")], 2, ["f1"]),
])
def test_prune_keeps_the_newest_completed_and_never_running(backups: list, keep: int,
                                                            pruned: list[str]) -> None:
    assert to_prune(backups, keep) == pruned


def pv(driver: str = "csi.statehold.io", handle: str = "fast/pvc-1", node: str | None = "n1") -> dict:
    spec: dict[str, Any] = {"capacity": {"storage": "10Gi"},
                            "csi": {"driver": driver, "volumeHandle": handle, "fsType": "xfs"}}
    if node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": loc.TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}}
    return {"metadata": {"name": "pv-1"}, "spec": spec}


PVC = {"metadata": {"name": "data"}, "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}}


def test_locate_finds_node_pool_and_volume() -> None:
    where = loc.locate(PVC, pv())
    assert (where.node, where.pool, where.volume, where.size) == ("n1", "fast", "pvc-1", 10 * GiB)


@pytest.mark.parametrize(("volume", "reason"), [
    (pv(driver="ebs.csi.aws.com"), "UnsupportedDriver"),
    (pv(handle="shared/x"), "UnsupportedVolume"),
    (pv(handle="nopool"), "BadVolumeHandle"),
    (pv(node=None), "NoNodeAffinity"),
])
def test_locate_refuses_what_is_not_a_statehold_local_volume(volume: dict, reason: str) -> None:
    with pytest.raises(Problem) as exc:
        loc.locate(PVC, volume)
    assert exc.value.reason == reason and exc.value.permanent


def test_unbound_pvc_is_a_retryable_problem() -> None:
    with pytest.raises(Problem) as exc:
        loc.check_pvc_bound({"metadata": {"name": "d"}, "spec": {}, "status": {"phase": "Pending"}})
    assert exc.value.reason == "PVCNotBound" and not exc.value.permanent


def test_plan_pool_for_directory_and_devices() -> None:
    p = plan_pool("p", {"node": "n", "directory": "/var/x", "imageSize": "2Gi", "imageCount": 2,
                        "profile": "raid1", "overprovisionRatio": 4})
    assert p.action == "create"
    assert p.spec.images == ("/var/x/p-0.img", "/var/x/p-1.img") and p.spec.image_size == 2 * GiB
    assert p.spec.profile is RaidProfile.RAID1 and p.spec.overprovision_ratio == 4
    q = plan_pool("q", {"node": "n", "devices": ["/dev/sdb"], "importExisting": True})
    assert (q.action, q.sources) == ("import", ("/dev/sdb",))


def test_plan_pool_bad_size_is_permanent() -> None:
    with pytest.raises(Problem) as exc:
        plan_pool("p", {"node": "n", "directory": "/x", "imageSize": "lots"})
    assert exc.value.permanent


@pytest.mark.parametrize(("pools", "size", "preferred", "chosen"), [
    ([("a", 10), ("b", 20)], 5, "a", "a"),
    ([("a", 10), ("b", 20)], 15, "a", "b"),
    ([("a", 10), ("b", 20)], 5, None, "b"),
])
def test_choose_pool(pools: list, size: int, preferred: str | None, chosen: str) -> None:
    assert choose_pool(pools, size, preferred) == chosen


def test_choose_pool_without_room_is_retryable() -> None:
    with pytest.raises(Problem) as exc:
        choose_pool([("a", 1)], 5, None)
    assert exc.value.reason == "NoCapacity" and not exc.value.permanent


def test_condition_transition_time_moves_only_on_status_change() -> None:
    c1 = set_condition(None, "Ready", False, "A", "m", now=t("2026-01-01 00:00"))
    c2 = set_condition(c1, "Ready", False, "B", "m2", now=t("2026-01-01 01:00"))
    c3 = set_condition(c2, "Ready", True, "C", "m3", now=t("2026-01-01 02:00"))
    assert c2[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and c2[0]["reason"] == "B"
    assert c3[0]["lastTransitionTime"] == "2026-01-01T02:00:00Z"


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(i) for i in range(4)] == [5, 10, 20, 40]
    assert backoff(50) == 300
