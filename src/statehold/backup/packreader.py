"""Reading many chunks of a version 2 repository with few requests (format §11.5).

The wanted chunks are taken in windows; each window's chunks are located through the
index cache, sorted by pack and offset, and chunks of one pack lying close together are
fetched with one ranged read. At most ``parallel`` requests run at once and at most
``budget`` fetched bytes are held, so memory stays flat whatever the backup's size. Every
blob is decoded and re-hashed before it is delivered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from statehold.backup.chunkstore import check_blob, index_of
from statehold.backup.packs import pack_key
from statehold.backup.repository import Repository
from statehold.errors import Corrupt, NotFound

T = TypeVar("T")
Deliver = Callable[[T, bytes], None]
"""deliver(destination, plaintext), from worker threads."""
OnError = Callable[[bytes, Exception], None]
"""on_error(chunk id, NotFound or Corrupt); without one the first error is raised."""

WINDOW = 4096
MAX_RANGE = 8 << 20
MAX_GAP = 256 << 10
BUDGET = 64 << 20


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

    def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        with self.cond:
            self.cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
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


def fetch(repo: Repository, wanted: Iterable[tuple[bytes, int, T]], deliver: Deliver[T], *,
          parallel: int = 16, on_error: OnError | None = None, window: int = WINDOW,
          budget: int = BUDGET, max_range: int = MAX_RANGE) -> None:
    """Read every ``(chunk id, length, destination)`` of ``wanted`` and deliver its checked
    plaintext to ``deliver(destination, data)`` (a chunk wanted at several destinations is
    read once per window)."""
    index = index_of(repo)
    bytes_held = _Budget(budget)
    failure: list[BaseException] = []

    def fail(cid: bytes, exc: Exception) -> None:
        if on_error is None:
            raise exc
        on_error(cid, exc)

    def run(r: _Range, held: int) -> None:
        try:
            key = pack_key(r.pack)
            try:
                data = memoryview(repo.store.get_range(key, r.start, r.end - r.start))
            except NotFound:
                for w in r.wants:
                    fail(w.cid, NotFound(f"chunk {w.cid.hex()}: its pack {key} is missing from "
                                         f"{repo.store.describe()}"))
                return
            for w in r.wants:
                try:
                    plain = check_blob(repo, w.cid, w.length, data[w.offset - r.start : w.offset - r.start
                                                                   + w.blob_len])
                except Corrupt as exc:
                    fail(w.cid, exc)
                    continue
                for dest in w.dests:
                    deliver(dest, plain)  # type: ignore[arg-type]
        except BaseException as exc:
            failure.append(exc)
            raise
        finally:
            bytes_held.release(held)

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="pack-read") as pool:
        running: set[Future[None]] = set()
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
                                             f"{repo.store.describe()}"))
                        continue
                    w.offset, w.blob_len = loc.offset, loc.length
                    pack_of[len(located)] = loc.pack
                    located.append(w)
                for r in plan_ranges(located, pack_of, max_range=max_range):
                    if failure:
                        raise failure[0]
                    held = bytes_held.acquire(r.end - r.start)
                    running.add(pool.submit(run, r, held))
                    if len(running) >= 2 * parallel:
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()
            for f in running:
                f.result()
        except BaseException:
            for f in running:
                f.cancel()
            raise
