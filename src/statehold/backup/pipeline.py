"""The parallel chunk pipeline: read -> hash -> (skip zero / known) -> compress+encrypt -> store.

One reader (the calling thread) fills chunk buffers taken from a fixed pool with
``os.preadv``; worker threads hash, encode and hand new chunks to the repository's sink
(:mod:`.chunkstore`: one object per chunk in format 1, packs in format 2). The buffer pool
bounds memory: the reader blocks when every buffer is in flight, and a sink that cannot
take more (format 2: every upload slot busy) blocks the worker holding its buffer, so
memory is ``(workers + 2) * chunk_size`` plus the sink's own bound, whatever the image
size. BLAKE3, zstd, AES-GCM and file/socket I/O release the GIL, so the workers really run
in parallel.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from statehold.backup.chunkstore import COMMIT_EVERY, ChunkSink
from statehold.backup.packs import blob_key
from statehold.backup.repository import Repository
from statehold.errors import Unavailable

__all__ = ["COMMIT_EVERY", "FaultHook", "PipelineResult", "Progress", "run_pipeline"]

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes); called from worker threads, serialised by a lock."""
FaultHook = Callable[[str], None]
"""fault(point) for failure tests: points are 'chunk-stored' and 'before-manifest' (and in
format 2 the packer's 'pack-stored' and 'index-stored')."""


@dataclass(frozen=True, slots=True)
class PipelineResult:
    ids: dict[int, bytes]
    """chunk index -> id for every non-zero chunk read."""
    bytes_read: int
    bytes_new: int
    stored_new: int
    chunks_new: int


class _Shared:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.lock = threading.Lock()
        self.ids: dict[int, bytes] = {}
        self.done = 0
        self.total = total
        self.progress = progress
        self.bytes_new = 0
        self.stored_new = 0
        self.chunks_new = 0


def run_pipeline(repo: Repository, fd: int, size: int, indices: Iterable[int], *, total: int,
                 sink: ChunkSink, workers: int, progress: Progress | None = None,
                 fault: FaultHook | None = None) -> PipelineResult:
    """Back up the chunks ``indices`` (sorted) of the image open as ``fd`` into ``sink``;
    the caller calls ``sink.finish()`` before its manifest."""
    cs = repo.chunk_size
    codec = repo.codec
    st = _Shared(total, progress)
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(workers + 2):
        free.put(bytearray(cs))
    failure: list[BaseException] = []

    def work(idx: int, buf: bytearray, length: int) -> None:
        try:
            view = memoryview(buf)[:length]
            cid = codec.chunk_id(view)
            upload = False
            if cid != codec.zero_id(length):
                with st.lock:
                    st.ids[idx] = cid
                upload = sink.claim(cid)
            if upload:
                blob = codec.encode(blob_key(cid), view)
                view.release()
                free.put(buf)
                buf = None  # type: ignore[assignment]
                sink.store(cid, blob)
                with st.lock:
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
