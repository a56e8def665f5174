"""The parallel chunk pipeline: read -> hash -> (skip zero / known) -> compress+encrypt -> put.

One reader (the calling thread) fills chunk buffers taken from a fixed pool with
``os.preadv``; worker threads hash, encode and upload. The buffer pool bounds memory: the
reader blocks when every buffer is in flight, so memory is ``(workers + 2) * chunk_size``
plus the encoded blobs being uploaded, whatever the image size. BLAKE3, zstd, AES-GCM and
file/socket I/O release the GIL, so the workers really run in parallel.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from statehold.backup.repository import Repository, chunk_key
from statehold.backup.store import BatchingStore
from statehold.errors import Unavailable

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes); called from worker threads, serialised by a lock."""
COMMIT_EVERY = 256 << 20
"""Batching stores publish staged chunks after this many stored bytes: a killed backup
loses at most this much work (the next run reuses everything committed before)."""
FaultHook = Callable[[str], None]
"""fault(point) for failure tests: points are 'chunk-stored' and 'before-manifest'."""


@dataclass(frozen=True, slots=True)
class PipelineResult:
    ids: dict[int, bytes]
    """chunk index -> id for every non-zero chunk read."""
    bytes_read: int
    bytes_new: int
    stored_new: int
    chunks_new: int


class _Shared:
    def __init__(self, known: set[bytes], total: int, progress: Progress | None) -> None:
        self.lock = threading.Lock()
        self.known = known
        self.pending: set[bytes] = set()
        self.ids: dict[int, bytes] = {}
        self.done = 0
        self.total = total
        self.progress = progress
        self.bytes_new = 0
        self.stored_new = 0
        self.chunks_new = 0


def run_pipeline(repo: Repository, fd: int, size: int, indices: Iterable[int], *, total: int,
                 known: set[bytes], workers: int, progress: Progress | None = None,
                 fault: FaultHook | None = None, commit_every: int = COMMIT_EVERY) -> PipelineResult:
    """Back up the chunks ``indices`` (sorted) of the image open as ``fd``."""
    cs = repo.chunk_size
    codec = repo.codec
    st = _Shared(known, total, progress)
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(workers + 2):
        free.put(bytearray(cs))
    failure: list[BaseException] = []
    store = repo.store
    batching = store if isinstance(store, BatchingStore) else None
    since_commit = [0]

    def put(key: str, blob: bytes) -> None:
        if batching is None:
            store.put(key, blob)
            return
        batching.put_later(key, blob)
        with st.lock:
            since_commit[0] += len(blob)
            due = since_commit[0] >= commit_every
            if due:
                since_commit[0] = 0
        if due:
            batching.commit()

    def work(idx: int, buf: bytearray, length: int) -> None:
        try:
            view = memoryview(buf)[:length]
            cid = codec.chunk_id(view)
            upload = False
            if cid != codec.zero_id(length):
                with st.lock:
                    st.ids[idx] = cid
                    if cid not in st.known and cid not in st.pending:
                        st.pending.add(cid)
                        upload = True
            if upload:
                key = chunk_key(cid)
                blob = codec.encode(key, view)
                view.release()
                free.put(buf)
                buf = None  # type: ignore[assignment]
                put(key, blob)
                with st.lock:
                    st.known.add(cid)
                    st.pending.discard(cid)
                    st.bytes_new += length
                    st.stored_new += len(blob)
                    st.chunks_new += 1
                if fault is not None:
                    fault("chunk-stored")
            with st.lock:
                st.done += length
                if st.progress is not None:
                    st.progress(st.done, st.total)
        except BaseException as exc:
            failure.append(exc)
            raise
        finally:
            if buf is not None:
                free.put(buf)

    bytes_read = 0
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="backup") as pool:
        try:
            for idx in indices:
                if failure:
                    break
                buf = free.get()
                off = idx * cs
                length = min(cs, size - off)
                got = _read_full(fd, buf, length, off)
                bytes_read += got
                futures.append(pool.submit(work, idx, buf, length))
                if len(futures) > 4 * workers:
                    futures = [f for f in futures if not f.done() or f.exception()]
        finally:
            for f in futures:
                f.exception()  # wait for all
    if failure:
        raise failure[0]
    if batching is not None:
        batching.commit()  # every chunk durable and visible before the caller's manifest
    return PipelineResult(st.ids, bytes_read, st.bytes_new, st.stored_new, st.chunks_new)


def _read_full(fd: int, buf: bytearray, length: int, off: int) -> int:
    view = memoryview(buf)
    got = 0
    try:
        while got < length:
            n = os.preadv(fd, [view[got:length]], off + got)
            if n == 0:  # file shrank under us: the rest reads as zeros
                view[got:length] = bytes(length - got)
                break
            got += n
    except OSError as exc:
        raise Unavailable(f"reading the image at offset {off + got}: {exc.strerror}") from exc
    finally:
        view.release()
    return got
