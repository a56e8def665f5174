"""Space that comes back: trimming a mounted volume's filesystem, by hand or on a schedule.

A volume's backing file only grows as its filesystem writes new blocks; deleting files
inside frees them for the filesystem, not for the pool. ``FITRIM`` asks the filesystem to
discard its free space; the volume's loop device turns each discard into
``fallocate(PUNCH_HOLE)`` on the backing file, and the pool gets the blocks back (unless a
snapshot still shares them). The pool's capacity (statvfs of the pool filesystem) follows
at once.

Four details make that reliable rather than eventual (each measured here, kernel 6.18):

* XFS frees an unlinked file's blocks in a background worker ("inodegc"), and ``FITRIM``
  skips blocks not yet freed, so a trim right after ``rm`` returned nothing about one time
  in two. :func:`settle` first asks XFS to finish that work (``XFS_IOC_FREE_EOFBLOCKS``,
  which flushes the queue) and then ``syncfs`` commits the frees, for every filesystem.
* XFS's ``FITRIM`` returns once its discards are *issued*; the loop driver punches the
  holes as it completes them, up to a few hundred milliseconds later. The trim waits until
  the loop device has nothing in flight (:func:`statehold.engine.loop.wait_idle`).
* The loop device's in-flight count is not the whole story: a few runs of the test suite,
  on loaded cores, found nothing in flight right after ``FITRIM`` while the holes were
  still being punched (a quarter of the 128 MiB had come back when the trim
  measured, all of it moments later). So the trim measures once the backing file's
  allocation has also stopped changing for 0.2 s (:func:`settled_allocation`), which a
  trim, a maintenance pass, can afford.
* What a trim achieved is measured where it matters, on the pool: the backing file's
  allocated bytes (``st_blocks``) before and after. The count a filesystem returns from
  ``FITRIM`` is not that (XFS reports the whole range it looked at).

Schedules: a StorageClass parameter ``trimSchedule`` (five-field cron, UTC) is kept as the
volume label :data:`SCHEDULE_LABEL`; :func:`run_due` trims every mounted volume whose
schedule has a slot since its last trim, which the pool records in its ``meta`` table
(row ``trim/<volume>``, JSON with the volume's creation time, so a new volume reusing a
name starts afresh).

ioctl numbers (``linux/fs.h``, ``xfs_fs.h``): ``FITRIM = _IOWR('X', 121, struct
fstrim_range)`` with ``struct fstrim_range { __u64 start, len, minlen; }`` (24 bytes) ->
``0xC0185879``; ``XFS_IOC_FREE_EOFBLOCKS = _IOR('X', 58, struct xfs_fs_eofblocks)`` (128
bytes: version, flags, uid, gid, project id, a pad word, min file size, 12 pad words) ->
``0x8080583A``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from statehold.engine import loop
from statehold.engine.types import Volume
from statehold.errors import Corrupt, FailedPrecondition, InvalidArgument, StateholdError

log = logging.getLogger("statehold.engine.trim")

FITRIM = 0xC0185879
XFS_IOC_FREE_EOFBLOCKS = 0x8080583A
_RANGE = struct.Struct("=QQQ")
_EOFBLOCKS = struct.Struct("=IIIIIIQ96x")
assert _RANGE.size == 24 and _EOFBLOCKS.size == 128
_EOFBLOCKS_VERSION = 1
_XFS_MAGIC = 0x58465342

SCHEDULE_PARAMETER = "trimSchedule"
SCHEDULE_LABEL = "statehold.io/trim-schedule"
RECORD_PREFIX = "trim/"
RECORD_VERSION = 1

_libc = ctypes.CDLL(None, use_errno=True)


# -- schedules ---------------------------------------------------------------------------------
def check_schedule(expr: str) -> str:
    """The expression if it is a valid five-field cron line (UTC); InvalidArgument if not."""
    text = " ".join(expr.split())
    if len(text.split(" ")) != 5:
        raise InvalidArgument(f"{SCHEDULE_PARAMETER} {expr!r} must have five fields (minute "
                              "hour day-of-month month day-of-week), e.g. '0 3 * * 0'")
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError,
            KeyError) as exc:
        raise InvalidArgument(f"{SCHEDULE_PARAMETER} {expr!r} is not a valid cron "
                              f"expression: {exc}") from exc
    return text


def schedule_labels(parameters: Mapping[str, str]) -> dict[str, str]:
    """The volume labels of a StorageClass's ``trimSchedule`` (none without it)."""
    raw = parameters.get(SCHEDULE_PARAMETER, "").strip()
    return {SCHEDULE_LABEL: check_schedule(raw)} if raw else {}


def next_slot(expr: str, after: float) -> float:
    """The first slot of ``expr`` strictly after the instant ``after`` (epoch seconds)."""
    start = datetime.fromtimestamp(after, UTC)
    return float(croniter(expr, start).get_next(datetime).timestamp())


# -- the operation -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrimResult:
    """One trim of one volume's filesystem, measured on the pool."""

    volume: str                # "<pool>/<name>"
    target: str                # the mount point trimmed
    allocated_before: int      # bytes the backing file held in the pool before
    allocated_after: int       # and after
    discarded: int             # what the filesystem said it discarded (XFS: the range scanned)
    seconds: float
    at: float                  # when it finished (epoch seconds)

    @property
    def released(self) -> int:
        """Bytes the pool got back (0 if the volume grew meanwhile)."""
        return max(0, self.allocated_before - self.allocated_after)


def allocated(path: Path) -> int:
    """Bytes of the pool that the file occupies (holes excluded; shared extents included)."""
    return os.stat(path).st_blocks * 512


def settle(fd: int) -> None:
    """Make the filesystem of the open directory ``fd`` hand back what it freed lazily,
    then commit: after this, ``FITRIM`` sees every block deleted before the call."""
    if _is_xfs(fd):
        buf = bytearray(_EOFBLOCKS.pack(_EOFBLOCKS_VERSION, 0, 0, 0, 0, 0, 0))
        with contextlib.suppress(OSError):  # an old kernel: syncfs and FITRIM still work
            fcntl.ioctl(fd, XFS_IOC_FREE_EOFBLOCKS, buf, True)
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise StateholdError(f"syncfs failed: {os.strerror(err)}")


def _is_xfs(fd: int) -> bool:
    """statfs(2)'s f_type, which os.fstatvfs does not expose: read it through libc."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return int(struct.unpack_from("=q", buf.raw, 0)[0]) == _XFS_MAGIC


def fitrim(fd: int, minlen: int = 0) -> int:
    """``FITRIM`` the whole filesystem of the open directory ``fd``: the byte count it
    returns. FailedPrecondition when the filesystem or its device cannot discard."""
    buf = bytearray(_RANGE.pack(0, 0xFFFF_FFFF_FFFF_FFFF, minlen))
    try:
        fcntl.ioctl(fd, FITRIM, buf, True)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise FailedPrecondition(f"the filesystem cannot discard its free space: "
                                     f"{exc.strerror}") from exc
        raise StateholdError(f"FITRIM failed: {exc.strerror}") from exc
    return int(_RANGE.unpack(bytes(buf))[1])


IDLE_TIMEOUT = 30.0
"""Seconds a trim waits for its discards to be done before it measures (see
:func:`statehold.engine.loop.wait_idle`)."""


SETTLE_POLL = 0.05
SETTLE_READS = 5


def settled_allocation(backing: Path, device: str, timeout: float = IDLE_TIMEOUT) -> int:
    """The backing file's allocated bytes once the device is idle and the count has not
    moved across :data:`SETTLE_READS` reads :data:`SETTLE_POLL` s apart (or at
    ``timeout``, on a volume whose writers never stop)."""
    deadline = time.monotonic() + timeout
    loop.wait_idle(device, timeout)
    last, same = allocated(backing), 1
    while same < SETTLE_READS and time.monotonic() < deadline:
        time.sleep(SETTLE_POLL)
        now = allocated(backing)
        same = same + 1 if now == last and not loop.in_flight(device) else 1
        last = now
    return last


def trim_fd(fd: int, volume: str, target: str, backing: Path, device: str,
            clock: Callable[[], float] = time.time) -> TrimResult:
    """Trim the filesystem open as ``fd`` (mounted at ``target``, on loop device
    ``device``) of the volume whose backing file is ``backing``; measure what the pool got
    back once the device finished the discards."""
    started = time.monotonic()
    before = allocated(backing)
    settle(fd)
    discarded = fitrim(fd)
    after = settled_allocation(backing, device)
    result = TrimResult(volume=volume, target=target, allocated_before=before,
                        allocated_after=after, discarded=discarded,
                        seconds=time.monotonic() - started, at=clock())
    log.info("volume trimmed volume=%s target=%s released=%d allocated=%d seconds=%.3f",
             volume, target, result.released, after, result.seconds)
    return result


def mount_id_of(fd: int) -> int:
    """The id of the mount an open fd lies on (``mnt_id`` of /proc/self/fdinfo)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "mnt_id":
            return int(value)
    raise StateholdError("the kernel does not report mnt_id in /proc/self/fdinfo")


@contextlib.contextmanager
def open_mount(target: str, mount_id: int) -> Iterator[int]:
    """An fd on the mount point ``target``, checked to be mount ``mount_id`` (from
    mountinfo): what is trimmed is what was found, even if the path was mounted over
    meanwhile. While the fd is open the mount cannot be unmounted (EBUSY)."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if mount_id_of(fd) != mount_id:
            raise FailedPrecondition(f"{target} no longer holds the volume's filesystem")
        yield fd
    finally:
        os.close(fd)


# -- the record of the last trim -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrimRecord:
    created_at: float   # the volume's, to tell it from a later volume of the same name
    last: float         # when its last trim finished
    released: int       # what that trim gave back to the pool


def _decode(name: str, raw: str) -> TrimRecord:
    try:
        doc = json.loads(raw)
        if int(doc.get("version", 0)) > RECORD_VERSION:
            raise Corrupt(f"{RECORD_PREFIX}{name} has version {doc['version']}, newer than "
                          "this reader")
        return TrimRecord(float(doc["created_at"]), float(doc["last"]), int(doc["released"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"{RECORD_PREFIX}{name} is unreadable: {exc}") from exc


def read_record(db: sqlite3.Connection, name: str, created_at: float) -> TrimRecord | None:
    """The last trim of volume ``name`` created at ``created_at``, or None."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (RECORD_PREFIX + name,)).fetchone()
    if row is None:
        return None
    rec = _decode(name, row[0])
    return rec if rec.created_at == created_at else None


def read_records(db: sqlite3.Connection, created: Mapping[str, float]) -> dict[str, TrimRecord]:
    """The last trim of each volume named in ``created`` (name -> its creation time) that
    has one, in one query."""
    rows = db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                      (len(RECORD_PREFIX), RECORD_PREFIX)).fetchall()
    out: dict[str, TrimRecord] = {}
    for key, raw in rows:
        name = key.removeprefix(RECORD_PREFIX)
        if name in created:
            rec = _decode(name, raw)
            if rec.created_at == created[name]:
                out[name] = rec
    return out


def write_record(db: sqlite3.Connection, name: str, rec: TrimRecord) -> None:
    doc = {"version": RECORD_VERSION, "created_at": rec.created_at, "last": rec.last,
           "released": rec.released}
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
               (RECORD_PREFIX + name, json.dumps(doc)))


def drop_record(db: sqlite3.Connection, name: str) -> None:
    db.execute("DELETE FROM meta WHERE key=?", (RECORD_PREFIX + name,))


# -- the scheduled pass -----------------------------------------------------------------------------
class Trimmable(Protocol):
    """What :func:`run_due` needs of a pool (:class:`statehold.engine.pool.Pool`)."""

    name: str

    def list_volumes(self) -> list[Volume]: ...

    def trim_records(self) -> dict[str, TrimRecord]: ...

    def trim(self, name: str, *, at: float | None = None) -> TrimResult: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    volume: str
    result: TrimResult | None = None
    skipped: str = ""          # why nothing was done (not due is not reported)
    error: str = ""


Hold = Callable[[str], contextlib.AbstractContextManager[object]]
"""Called with a volume id around its trim: the CSI node server keeps its per-volume lock
(a NodeUnstage meanwhile is answered ABORTED, and retried, rather than failing EBUSY)."""


def due(vol: Volume, record: TrimRecord | None, now: float) -> bool:
    """A scheduled volume has a slot in (its last trim, or its creation, now]."""
    expr = vol.labels.get(SCHEDULE_LABEL, "")
    if not expr:
        return False
    last = record.last if record is not None else vol.created_at
    try:
        return next_slot(expr, last) <= now
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError,
            KeyError):
        return False  # a label written by hand that is not cron: reported by describe


def run_due(pools: list[Trimmable], now: float, hold: Hold | None = None) -> list[Outcome]:
    """Trim every mounted filesystem volume whose schedule is due. A volume that is not
    mounted stays due and is trimmed at the first pass that finds it mounted; one that
    fails is reported and tried again at the next pass."""
    outcomes: list[Outcome] = []
    for pool in pools:
        try:
            volumes = pool.list_volumes()
            records = pool.trim_records()
        except StateholdError as exc:
            log.warning("trim pass skipped pool=%s error=%s", pool.name, exc)
            continue
        for vol in volumes:
            if vol.fs is None or SCHEDULE_LABEL not in vol.labels:
                continue
            try:
                if not due(vol, records.get(vol.name), now):
                    continue
                if not vol.mounts:
                    outcomes.append(Outcome(vol.id, skipped="not mounted"))
                    continue
                with hold(vol.id) if hold is not None else contextlib.nullcontext():
                    outcomes.append(Outcome(vol.id, result=pool.trim(vol.name, at=now)))
            except StateholdError as exc:
                log.warning("scheduled trim failed volume=%s error=%s", vol.id, exc)
                outcomes.append(Outcome(vol.id, error=str(exc) or type(exc).__name__))
    return outcomes
