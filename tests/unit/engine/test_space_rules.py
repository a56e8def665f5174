"""The pure rules of pool space (engine/capacity) and trim schedules (engine/trim)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from statehold.engine import capacity, trim
from statehold.engine.capacity import Level, Thresholds
from statehold.engine.fs import mount_options
from statehold.engine.types import Capacity, FsType, GiB, MiB, Volume, VolumeMode
from statehold.errors import InvalidArgument, OutOfCapacity


def cap(total: int, used: int, free: int | None = None) -> Capacity:
    return Capacity(total=total, used=used, provisioned=0,
                    free=total - used if free is None else free, overprovision_ratio=10.0,
                    allocatable=total)


def test_levels_follow_the_marks_and_full_is_free_space_below_the_margin() -> None:
    marks = Thresholds(80, 90)
    assert capacity.level_of(cap(100 * GiB, 79 * GiB), marks) is Level.OK
    assert capacity.level_of(cap(100 * GiB, 80 * GiB), marks) is Level.WARNING
    assert capacity.level_of(cap(100 * GiB, 90 * GiB), marks) is Level.CRITICAL
    # 0.1 % of 100 GiB is ~102 MiB: with 50 MiB free the next allocating write may fail
    assert capacity.level_of(cap(100 * GiB, 99 * GiB, free=50 * MiB), marks) is Level.FULL
    # small pools: at least 8 MiB; huge ones: at most 1 GiB
    assert capacity.full_margin(300 * MiB) == 8 * MiB
    assert capacity.full_margin(10_000 * GiB) == GiB
    # a critical mark of 100 % still leaves "full" to say when writes fail
    assert capacity.level_of(cap(GiB, GiB - 4 * MiB), Thresholds(90, 100)) is Level.FULL


def test_marks_must_be_ordered_percentages() -> None:
    assert capacity.check_thresholds(70, 70) == Thresholds(70.0, 70.0)
    for bad in ((0, 90), (80, 101), (95, 90), (float("nan"), 90), (True, 90)):
        with pytest.raises(InvalidArgument):
            capacity.check_thresholds(*bad)


def test_refusal_says_how_full_which_mark_and_what_to_do() -> None:
    space = capacity.space_of("fast", cap(GiB, 950 * MiB), Thresholds(80, 90))
    with pytest.raises(OutOfCapacity) as caught:
        capacity.refuse_new(space, "snapshot 'nightly'")
    text = str(caught.value)
    assert "snapshot 'nightly' refused" in text and "92.8 % full" in text
    assert "critical mark of 90 %" in text and "delete snapshots" in text
    capacity.refuse_new(capacity.space_of("fast", cap(GiB, 850 * MiB), Thresholds(80, 90)), "x")


def test_volumes_are_abnormal_while_the_pool_is_full_or_after_enospc_above_critical() -> None:
    marks = Thresholds(80, 90)
    nospc = ["critical space allocation error, dev loop4, sector 639208 op 0x1:(WRITE)"]
    full = capacity.space_of("p", cap(GiB, GiB - MiB), marks)
    critical = capacity.space_of("p", cap(GiB, 950 * MiB), marks)
    fine = capacity.space_of("p", cap(GiB, 100 * MiB), marks)
    assert "out of space" in (capacity.volume_problem(full) or "")
    assert capacity.volume_problem(critical) is None
    assert "writes to this volume failed" in (capacity.volume_problem(critical, nospc) or "")
    assert capacity.volume_problem(fine, nospc) is None  # space came back: healthy again


def test_trim_schedules_are_five_field_cron_lines() -> None:
    assert trim.schedule_labels({"trimSchedule": " 0  3 * * 0 "}) == {
        trim.SCHEDULE_LABEL: "0 3 * * 0"}
    assert trim.schedule_labels({}) == {}
    for bad in ("@daily", "0 3 * *", "61 3 * * *", "every night"):
        with pytest.raises(InvalidArgument, match="trimSchedule"):
            trim.schedule_labels({"trimSchedule": bad})


def vol(labels: dict[str, str], created: float) -> Volume:
    return Volume(pool="p", name="v", size=GiB, mode=VolumeMode.FILESYSTEM, fs=FsType.XFS,
                  path=Path("/nonexistent"), created_at=created, labels=labels)


def test_a_volume_is_due_once_a_slot_passed_since_its_last_trim() -> None:
    created = datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp()
    v = vol({trim.SCHEDULE_LABEL: "0 3 * * *"}, created)
    slot = datetime(2026, 1, 6, 3, 0, tzinfo=UTC).timestamp()
    assert trim.next_slot("0 3 * * *", created) == slot
    assert not trim.due(v, None, slot - 1)
    assert trim.due(v, None, slot)
    done = trim.TrimRecord(created_at=created, last=slot + 5, released=0)
    assert not trim.due(v, done, slot + 3600)
    assert trim.due(v, done, slot + 86400)
    assert not trim.due(vol({}, created), None, slot + 86400)
    assert not trim.due(vol({trim.SCHEDULE_LABEL: "nonsense"}, created), None, slot)


def test_ext4_volumes_mount_with_dioread_lock_unless_the_class_chose() -> None:
    assert mount_options("ext4", [], False) == ["dioread_lock"]
    assert mount_options("ext4", ["dioread_nolock"], False) == ["dioread_nolock"]
    assert mount_options("ext4", [], True) == ["ro"]
    assert "dioread_lock" not in mount_options("xfs", [], False)
