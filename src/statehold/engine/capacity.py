"""How full a pool may get before it says so, and before it refuses new work.

Volumes are thin and a pool is over-provisioned (the sum of volume sizes may reach its
capacity times the ratio), so a pool can fill while every volume still has room inside.
When it does, a write that needs a new block in a volume's backing file gets ENOSPC from
the pool filesystem; the loop device passes it up ("critical space allocation error, dev
loopN") and the filesystem inside reports it to the writer. That is survivable (XFS
retries its metadata until space comes back, btrfs and ext4 fail the write; see
docs/csi.md "When a pool fills"), but it should come as late and as loudly as possible:

* two marks, as a percentage of the pool filesystem's capacity used: **warning** (an Event,
  a condition, a metric to alert on) and **critical** (the same, and from then on the pool
  refuses new volumes, clones and snapshots with OutOfCapacity, i.e. RESOURCE_EXHAUSTED,
  because each of them can only add to what the pool must hold);
* **full**: free space below :func:`full_margin`; writes that need new blocks fail.

The marks live in the pool itself (``meta`` row ``space/thresholds``, JSON with a
``version``), so an imported pool keeps them. Pure functions, apart from reading and
writing that row.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sqlite3
from dataclasses import dataclass

from statehold.engine.types import Capacity, GiB, MiB
from statehold.errors import Corrupt, InvalidArgument, OutOfCapacity

META_KEY = "space/thresholds"
RECORD_VERSION = 1

DEFAULT_WARNING = 80.0
DEFAULT_CRITICAL = 90.0

FULL_MARGIN_MIN = 8 * MiB
FULL_MARGIN_MAX = 1 * GiB
"""A pool counts as full when less than 0.1 % of it (at least 8 MiB, at most 1 GiB) is free.
Measured on a 336 MiB XFS pool: the first ENOSPC came with 0.5-0.8 MiB still free (the rest
is spoken for by the filesystem's own reservations), so "free == 0" is never seen."""

NOSPC = re.compile(r"critical space allocation error")
"""What the block layer logs when the loop device's write to its backing file failed with
ENOSPC (BLK_STS_NOSPC): the pool, not the volume, ran out."""


class Level(enum.StrEnum):
    """Where a pool's usage stands against its marks (ordered: each implies the previous)."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    FULL = "full"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Level.OK: 0, Level.WARNING: 1, Level.CRITICAL: 2, Level.FULL: 3}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Percentages of the pool's capacity used: ``0 < warning <= critical <= 100``."""

    warning: float = DEFAULT_WARNING
    critical: float = DEFAULT_CRITICAL


def check_thresholds(warning: float, critical: float) -> Thresholds:
    """Validated marks; InvalidArgument unless ``0 < warning <= critical <= 100``."""
    for name, value in (("warning", warning), ("critical", critical)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not 0 < value <= 100:
            raise InvalidArgument(f"{name} threshold must be a percentage above 0 and at most "
                                  f"100, got {value!r}")
    if warning > critical:
        raise InvalidArgument(f"the warning threshold ({warning:g} %) must not be above the "
                              f"critical one ({critical:g} %)")
    return Thresholds(float(warning), float(critical))


def read_thresholds(db: sqlite3.Connection) -> Thresholds:
    """The pool's marks (the defaults when never set)."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (META_KEY,)).fetchone()
    if row is None:
        return Thresholds()
    try:
        doc = json.loads(row[0])
        if int(doc.get("version", 0)) > RECORD_VERSION:
            raise Corrupt(f"{META_KEY} has version {doc['version']}, newer than this reader")
        return check_thresholds(doc["warning"], doc["critical"])
    except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
        raise Corrupt(f"{META_KEY} is unreadable: {exc}") from exc


def write_thresholds(db: sqlite3.Connection, marks: Thresholds) -> None:
    doc = {"version": RECORD_VERSION, "warning": marks.warning, "critical": marks.critical}
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (META_KEY, json.dumps(doc)))


def full_margin(total: int) -> int:
    """Free bytes below which the pool is full (see :data:`FULL_MARGIN_MIN`)."""
    return min(max(total // 1000, FULL_MARGIN_MIN), FULL_MARGIN_MAX)


def used_percent(cap: Capacity) -> float:
    """Share of the pool filesystem's capacity in use, in percent."""
    return 100.0 * cap.used / cap.total if cap.total > 0 else 100.0


@dataclass(frozen=True, slots=True)
class Space:
    """A pool's usage against its marks at one moment."""

    pool: str
    capacity: Capacity
    thresholds: Thresholds
    level: Level

    @property
    def used_percent(self) -> float:
        return used_percent(self.capacity)

    def describe(self) -> str:
        """One sentence: how full, against which mark."""
        cap, marks = self.capacity, self.thresholds
        head = (f"pool {self.pool!r} is {self.used_percent:.1f} % full ({cap.used} of "
                f"{cap.total} bytes used, {cap.free} free)")
        if self.level is Level.FULL:
            return (f"{head}: it is out of space, and writes that need new blocks in its "
                    "volumes fail with ENOSPC")
        if self.level is Level.CRITICAL:
            return f"{head}, above its critical mark of {marks.critical:g} %"
        if self.level is Level.WARNING:
            return f"{head}, above its warning mark of {marks.warning:g} %"
        return f"{head}, below its warning mark of {marks.warning:g} %"


def level_of(cap: Capacity, marks: Thresholds) -> Level:
    """The level of a pool with capacity ``cap`` (pure)."""
    if cap.free < full_margin(cap.total):
        return Level.FULL
    pct = used_percent(cap)
    if pct >= marks.critical:
        return Level.CRITICAL
    if pct >= marks.warning:
        return Level.WARNING
    return Level.OK


def space_of(pool: str, cap: Capacity, marks: Thresholds) -> Space:
    return Space(pool, cap, marks, level_of(cap, marks))


REMEDY = ("free space first: delete snapshots or volumes that are no longer needed, trim "
          "mounted filesystems (statehold volume trim), or add capacity")


def refuse_new(space: Space, what: str) -> None:
    """OutOfCapacity for a new volume, clone or snapshot (``what``) at or above the
    critical mark: each of them can only add to what the pool must hold."""
    if space.level.rank >= Level.CRITICAL.rank:
        raise OutOfCapacity(f"{what} refused: {space.describe()}; new volumes, clones and "
                            f"snapshots are refused until it is below that mark again; {REMEDY}")


def volume_problem(space: Space, device_lines: list[str] | None = None) -> str | None:
    """Why a volume of this pool is abnormal for lack of space, or None.

    A full pool makes every volume abnormal (its next write to a block it has not written
    before fails). Above the critical mark, a volume whose device already had a write
    refused for lack of space (``device_lines``: the kernel's lines about its loop device
    since its filesystem was mounted) is abnormal too. Once the pool is back below the
    critical mark the volume is healthy again: the writes that failed were reported to
    the application, which is where they are handled.
    """
    if space.level is Level.FULL:
        return f"{space.describe()}; {REMEDY}"
    if space.level is Level.CRITICAL and any(NOSPC.search(line) for line in device_lines or ()):
        return (f"writes to this volume failed for lack of space in the pool: "
                f"{space.describe()}; {REMEDY}")
    return None
