"""The version 2 writer: chunk blobs into packs, packs into the store, index objects after
them (format §11.5), in bounded memory.

Workers hand encoded blobs to :meth:`Packer.store`; the open pack is sealed at
``pack_size`` and put by a small pool of upload threads while the next one fills. At most
``uploads`` sealed packs are in flight: a worker that seals one more blocks until an upload
finishes, and every other worker blocks behind it with its one blob, so the pipeline's
chunk buffers run out and the image reader stops too (backpressure: memory stays at about
``(uploads + 2) * pack_size`` however fast the source reads). Packs are built in buffers
reused from pack to pack and put as views of them: no 16 MiB object is allocated (and
left to the allocator's arenas) per pack, nor copied to seal it. Every ``index_every``
bytes of uploaded packs, and at :meth:`finish`, an index object naming them is put (after
a batching store's commit) and then added to the local cache: pack before index, index
before manifest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from statehold.backup.chunkindex import ChunkIndex
from statehold.backup.crypto import Codec
from statehold.backup.packs import (
    DEFAULT_PACK_SIZE,
    INDEX_MAX_ENTRIES,
    Entry,
    encode_index,
    index_key,
    new_index_name,
    new_pack_id,
    pack_key,
    pack_trailer,
)
from statehold.backup.repository import Repository
from statehold.backup.store import BatchingStore

log = logging.getLogger("statehold.backup.packer")

FaultHook = Callable[[str], None]
"""fault(point): 'pack-stored' after a pack's put, 'index-stored' after an index object's."""


class _Pack:
    """One pack being filled in a reusable buffer: blobs copied in, then the trailer."""

    def __init__(self, buf: bytearray) -> None:
        self.pid = new_pack_id()
        self.buf = buf
        self.size = 0
        self.entries: list[tuple[bytes, int, int]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def _append(self, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        if end > len(self.buf):  # a pack past its target (one large blob, a large header)
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.size : end] = data
        self.size = end

    def add(self, cid: bytes, blob: bytes) -> None:
        self.entries.append((cid, self.size, len(blob)))
        self._append(blob)

    def seal(self, codec: Codec) -> tuple[memoryview, list[Entry]]:
        """The pack's bytes (a view of the buffer: valid until it is reused) and entries."""
        self._append(pack_trailer(codec, self.pid, self.entries))
        entries = [Entry(cid, self.pid, off, n) for cid, off, n in self.entries]
        return memoryview(self.buf)[: self.size], entries


class Packer:
    def __init__(self, repo: Repository, index: ChunkIndex, *, pack_size: int | None = None,
                 uploads: int = 4, index_every: int = 256 << 20, fault: FaultHook | None = None) -> None:
        self.repo = repo
        self.index = index
        self.pack_size = pack_size or getattr(repo.config, "pack_size", 0) or DEFAULT_PACK_SIZE
        self.index_every = index_every
        self.fault = fault
        self.store_ = repo.store
        self.batching = repo.store if isinstance(repo.store, BatchingStore) else None
        self._lock = threading.Lock()
        self._gate = threading.Lock()
        self._flush_lock = threading.Lock()
        self._claimed: set[bytes] = set()
        """Ids stored (or being stored) by this packer and not yet in the cache."""
        self._open: _Pack | None = None
        self._free: list[bytearray] = []
        """Pack buffers not in use: at most ``uploads + 2`` ever exist (one open, one
        sealed waiting for a slot, ``uploads`` being put)."""
        self._slots = threading.BoundedSemaphore(max(1, uploads))
        self._pool = ThreadPoolExecutor(max(1, uploads), thread_name_prefix="pack-upload")
        self._futures: list[Future[None]] = []
        self._uploaded: list[Entry] = []
        self._uploaded_bytes = 0
        self._failure: BaseException | None = None
        self.packs = 0
        self.indexes = 0
        self.bytes_stored = 0

    # -- ChunkSink ----------------------------------------------------------------------------
    def claim(self, cid: bytes) -> bool:
        with self._lock:
            if cid in self._claimed or cid in self.index:
                return False
            self._claimed.add(cid)
            return True

    def store(self, cid: bytes, blob: bytes) -> None:
        # The gate: while a sealed pack waits for an upload slot, every other worker waits
        # here with its one blob, rather than filling further packs: memory is one open
        # pack, one sealed pack waiting and `uploads` in flight, whatever the worker count.
        with self._gate:
            sealed = None
            with self._lock:
                self._raise_failure()
                if self._open is None:
                    buf = self._free.pop() if self._free else bytearray(self.pack_size + (1 << 20))
                    self._open = _Pack(buf)
                self._open.add(cid, blob)
                if self._open.size >= self.pack_size:
                    sealed, self._open = self._open, None
            if sealed is not None:
                self._upload(sealed)

    def finish(self) -> None:
        """Upload the open pack, wait for every upload, put the last index object."""
        with self._lock:
            sealed, self._open = self._open, None
        if sealed is not None and len(sealed):
            self._upload(sealed)
        for f in list(self._futures):
            f.result()
        self._raise_failure()
        self._flush_index()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------
    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _upload(self, pack: _Pack) -> None:
        self._slots.acquire()  # backpressure: at most `uploads` sealed packs held
        try:
            self._raise_failure()
            data, entries = pack.seal(self.repo.codec)
            fut = self._pool.submit(self._put, pack, data, entries)
        except BaseException:
            self._slots.release()
            self._recycle(pack)
            raise
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(fut)

    def _recycle(self, pack: _Pack) -> None:
        with self._lock:
            self._free.append(pack.buf)

    def _put(self, pack: _Pack, data: memoryview, entries: list[Entry]) -> None:
        try:
            key = pack_key(pack.pid)
            try:
                if self.batching is not None:
                    self.batching.put_later(key, data)
                else:
                    self.store_.put(key, data)  # stores keep no reference after put returns
            finally:
                size = len(data)
                data.release()
                self._recycle(pack)
            with self._lock:
                self._uploaded.extend(entries)
                self._uploaded_bytes += size
                self.bytes_stored += size
                self.packs += 1
                due = self._uploaded_bytes >= self.index_every
            if self.fault is not None:
                self.fault("pack-stored")
            if due:
                self._flush_index()
        except BaseException as exc:
            with self._lock:
                if self._failure is None:
                    self._failure = exc
            raise
        finally:
            self._slots.release()

    def _flush_index(self) -> None:
        """Index objects for every pack uploaded so far; then the cache learns them."""
        with self._flush_lock:
            with self._lock:
                entries, self._uploaded = self._uploaded, []
                self._uploaded_bytes = 0
            if not entries:
                return
            if self.batching is not None:
                self.batching.commit()  # the packs durable and visible before any index names them
            for start in range(0, len(entries), INDEX_MAX_ENTRIES):
                part = entries[start : start + INDEX_MAX_ENTRIES]
                name = new_index_name()
                self.repo.put_blob(index_key(name), encode_index(part))
                self.index.add(name, (e.row() for e in part))
                self.indexes += 1
                if self.fault is not None:
                    self.fault("index-stored")
            with self._lock:
                for e in entries:
                    self._claimed.discard(e.cid)
            log.debug("index objects for %d chunks put", len(entries))
