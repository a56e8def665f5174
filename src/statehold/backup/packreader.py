"""Reading many chunks of a version 2 repository with few requests (format §11.5).

The wanted chunks are taken in windows; each window's chunks are located through the
index cache, sorted by pack and offset, and chunks of one pack lying close together are
fetched with one ranged read (a whole 16 MiB pack's blobs in one request when a restore
wants them all: one request costs the server far more than its bytes). At most
``parallel`` requests run at once and at most ``budget`` fetched bytes are held, so memory
stays flat whatever the backup's size.

Fetching and decoding are separate pools: a fetched range's blobs are decoded (decrypted,
decompressed, re-hashed: all release the GIL) by ``decoders`` threads in parallel, so a
16 MiB range is not decoded by one thread while the others wait for the budget. Large
ranges are read into reused buffers (a store with ``get_range_into``: no fresh 16 MiB
allocation, no page faults per request) and decoded into per-thread buffers; the data a
consumer is handed is a view valid only during its ``deliver`` call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol, TypeVar

from statehold.backup.chunkstore import check_blob_into, index_of
from statehold.backup.packs import pack_key
from statehold.backup.repository import Repository
from statehold.errors import Corrupt, NotFound

T = TypeVar("T")
Deliver = Callable[[T, bytes], None]
"""deliver(destination, plaintext), from worker threads."""
DeliverView = Callable[[T, memoryview], None]
"""deliver(destination, plaintext view): the view is valid only during the call."""
OnError = Callable[[bytes, Exception], None]
"""on_error(chunk id, NotFound or Corrupt); without one the first error is raised."""

WINDOW = 4096
MAX_RANGE = 18 << 20
"""A 16 MiB pack's blobs (sealed at the first blob past 16 MiB) in one read."""
MAX_GAP = 256 << 10
BUDGET = 72 << 20


class RangeReader(Protocol):
    def get_range_into(self, key: str, offset: int, buf: memoryview) -> int: ...


@dataclass(slots=True)
class _Want:
    cid: bytes
    length: int
    offset: int
    blob_len: int
    dests: list[object] = field(default_factory=list)


@dataclass(slots=True)
class _Range:
    pack: bytes
    start: int
    end: int
    wants: list[_Want]


class _Budget:
    """Bytes of fetched data allowed in memory at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, n: int, stop: Callable[[], bool]) -> int:
        """Take ``n`` bytes (at most the limit); 0 if ``stop()`` became true meanwhile."""
        n = min(n, self.limit)
        with self.cond:
            self.cond.wait_for(lambda: self.used + n <= self.limit or stop())
            if stop():
                return 0
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()

    def wait_idle(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def plan_ranges(wants: list[_Want], pack_of: dict[int, bytes], *, max_range: int = MAX_RANGE,
                max_gap: int = MAX_GAP) -> list[_Range]:
    """Group located chunks into ranged reads: same pack, gaps ≤ ``max_gap``, each read
    ≤ ``max_range`` (one chunk larger than that is read alone)."""
    order = sorted(range(len(wants)), key=lambda i: (pack_of[i], wants[i].offset))
    out: list[_Range] = []
    for i in order:
        w = wants[i]
        pack = pack_of[i]
        last = out[-1] if out else None
        end = w.offset + w.blob_len
        if (last is not None and last.pack == pack and w.offset - last.end <= max_gap
                and w.offset >= last.start and max(end, last.end) - last.start <= max_range):
            last.end = max(last.end, end)
            last.wants.append(w)
        else:
            out.append(_Range(pack, w.offset, end, [w]))
    return out


def default_decoders() -> int:
    """Decode threads: enough to keep every core busy while requests wait."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def fetch(repo: Repository, wanted: Iterable[tuple[bytes, int, T]], deliver: Deliver[T], *,
          parallel: int = 16, on_error: OnError | None = None, window: int = WINDOW,
          budget: int = BUDGET, max_range: int = MAX_RANGE) -> None:
    """Read every ``(chunk id, length, destination)`` of ``wanted`` and deliver its checked
    plaintext to ``deliver(destination, data)`` (a chunk wanted at several destinations is
    read once per window)."""
    fetch_views(repo, wanted, lambda dest, view: deliver(dest, view.tobytes()), parallel=parallel,
                on_error=on_error, window=window, budget=budget, max_range=max_range)


def fetch_views(repo: Repository, wanted: Iterable[tuple[bytes, int, T]], deliver: DeliverView[T], *,
                parallel: int = 16, decoders: int | None = None, on_error: OnError | None = None,
                window: int = WINDOW, budget: int = BUDGET, max_range: int = MAX_RANGE) -> None:
    """:func:`fetch` handing ``deliver`` a view valid only during the call (no copy: a
    consumer that writes it out at once, like a restore)."""
    index = index_of(repo)
    store = repo.store
    into: RangeReader | None = store if hasattr(store, "get_range_into") else None  # type: ignore[assignment]
    bytes_held = _Budget(max(budget, max_range))
    failure: list[BaseException] = []
    free_bufs: list[bytearray] = []
    bufs_lock = threading.Lock()
    tls = threading.local()

    n_decoders = decoders or default_decoders()

    def pooled(n: int) -> bool:
        """Ranges over half a buffer (whole packs, in a restore) are read into a reused
        buffer of ``max_range`` bytes, charged in full; smaller ones into their own."""
        return into is not None and n > max_range // 2

    def failed() -> bool:
        return bool(failure)

    def fail(cid: bytes, exc: Exception) -> None:
        if on_error is None:
            raise exc
        on_error(cid, exc)

    def scratch(n: int) -> bytearray:
        buf: bytearray | None = getattr(tls, "buf", None)
        if buf is None or len(buf) < n:
            buf = tls.buf = bytearray(max(n, 1 << 20))
        return buf

    class _Job:
        """One fetched range being decoded; its memory is released after its last blob."""

        def __init__(self, r: _Range, held: int) -> None:
            self.r = r
            self.held = held
            # a few tasks per range, not one per blob: each task costs the GIL, and every
            # decoder still gets a share of a whole-pack range
            per = max(1, -(-len(r.wants) // n_decoders))
            self.batches = [r.wants[i : i + per] for i in range(0, len(r.wants), per)]
            self.left = len(self.batches)
            self.lock = threading.Lock()
            self.data: memoryview | None = None
            self.buf: bytearray | None = None

        def done_one(self) -> None:
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                self.close()

        def close(self) -> None:
            if self.data is not None:
                self.data.release()
                self.data = None
            if self.buf is not None:
                with bufs_lock:
                    free_bufs.append(self.buf)
                self.buf = None
            bytes_held.release(self.held)

    def record(exc: BaseException) -> None:
        if not failure:
            failure.append(exc)
        bytes_held.wake()

    def decode(job: _Job, batch: list[_Want]) -> None:
        try:
            data = job.data
            for w in batch:
                if failure or data is None:
                    return
                at = w.offset - job.r.start
                try:
                    plain = check_blob_into(repo, w.cid, w.length, data[at : at + w.blob_len],
                                            scratch(w.blob_len))
                except Corrupt as exc:
                    fail(w.cid, exc)
                    continue
                for dest in w.dests:
                    deliver(dest, plain)  # type: ignore[arg-type]
        except BaseException as exc:
            record(exc)
        finally:
            job.done_one()

    def run(job: _Job) -> None:
        r = job.r
        try:
            if failure:
                job.close()
                return
            key = pack_key(r.pack)
            n = r.end - r.start
            try:
                if into is not None and pooled(n):
                    with bufs_lock:
                        buf = free_bufs.pop() if free_bufs else None
                    job.buf = buf if buf is not None else bytearray(max_range)
                    got = into.get_range_into(key, r.start, memoryview(job.buf)[:n])
                    job.data = memoryview(job.buf)[:got]
                else:
                    job.data = memoryview(store.get_range(key, r.start, n))
            except NotFound:
                for w in r.wants:
                    fail(w.cid, NotFound(f"chunk {w.cid.hex()}: its pack {key} is missing from "
                                         f"{store.describe()}"))
                job.close()
                return
        except BaseException as exc:
            record(exc)
            job.close()
            return
        for batch in job.batches:
            decode_pool.submit(decode, job, batch)

    with ThreadPoolExecutor(n_decoders, thread_name_prefix="pack-decode") as decode_pool, \
            ThreadPoolExecutor(max(1, parallel), thread_name_prefix="pack-read") as fetch_pool:
        try:
            for batch in _batched(wanted, window):
                wants: dict[bytes, _Want] = {}
                for cid, length, dest in batch:
                    w = wants.get(cid)
                    if w is None:
                        w = wants[cid] = _Want(cid, length, 0, 0)
                    w.dests.append(dest)
                located: list[_Want] = []
                pack_of: dict[int, bytes] = {}
                for w in wants.values():
                    loc = index.lookup(w.cid)
                    if loc is None:
                        fail(w.cid, NotFound(f"chunk {w.cid.hex()} is not in the index of "
                                             f"{store.describe()}"))
                        continue
                    w.offset, w.blob_len = loc.offset, loc.length
                    pack_of[len(located)] = loc.pack
                    located.append(w)
                for r in plan_ranges(located, pack_of, max_range=max_range):
                    n = r.end - r.start
                    held = bytes_held.acquire(max_range if pooled(n) else n, failed)
                    if failure:
                        break
                    fetch_pool.submit(run, _Job(r, held))
                if failure:
                    break
        except BaseException as exc:
            record(exc)
        # every range released (decoded, or dropped after a failure) before returning: no
        # thread delivers into a destination its caller has since closed
        bytes_held.wait_idle()
    if failure:
        raise failure[0]


__all__ = ["BUDGET", "MAX_RANGE", "Deliver", "DeliverView", "OnError", "fetch",
           "fetch_views", "plan_ranges"]
