"""File-tree backups (manifest kind "tree", format §6.3): for shared volumes, which are
directories on a shared filesystem rather than block images.

In a version 2 repository file content is cut by content (FastCDC 2020, average
``chunk_size``, format §11.8): bytes inserted or removed in the middle of a file shift only
the chunks around the edit, and the rest still deduplicate. In a version 1 repository it
is cut like images (aligned ``chunk_size`` slices, §6.3). Either way all-zero chunks are
omitted, and with a parent tree backup cut the same way a regular file whose size, mtime
and inode did not change reuses the parent's chunk list unread. Hard links are stored as
separate files; sockets, fifos and devices are skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyfastcdc import FastCDC

from statehold.backup import chunkstore
from statehold.backup.locks import Lock
from statehold.backup.manifest import FASTCDC_2020, Manifest, Stats
from statehold.backup.packs import blob_key
from statehold.backup.repository import Repository, new_backup_id
from statehold.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("statehold.backup.tree")

Progress = Callable[[int, int], None]

CDC_READ = 8 << 20
"""Bytes read per call while cutting a file by content: the reader's buffer, so memory
stays flat whatever the file's size."""


CDC_MAX_AVG = 4 << 20
"""The largest average FastCDC takes (its table of masks ends there); a repository with
larger chunks (up to 16 MiB) cuts its trees at this average."""


def chunking_for(repo: Repository) -> dict[str, Any] | None:
    """How a new tree backup in ``repo`` cuts its files (format §11.8): by content in a
    version 2 repository (average ``chunk_size`` up to 4 MiB, minimum a quarter of it,
    maximum four times it), fixed aligned slices (None) in version 1, whose readers know
    no other way."""
    if repo.config.version < 2:
        return None
    avg = min(repo.chunk_size, CDC_MAX_AVG)
    return {"method": FASTCDC_2020, "min": avg // 4, "avg": avg, "max": avg * 4}


def _is_zero(data: bytes) -> bool:
    """All zero bytes; a chunk whose first byte is not zero costs nothing to rule out."""
    return data[:1] == b"\0" and data.count(0) == len(data)


class _Bounded:
    """A raw file read through ``readinto`` that stops at ``size`` bytes: a file that grows
    while it is read is backed up at the size it was listed with."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def readinto(self, buf: memoryview) -> int:
        want = min(len(buf), self.left, CDC_READ)
        if want <= 0:
            return 0
        n = os.readv(self.fd, [buf[:want]])
        self.left -= n
        return n


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under root (root itself excluded), parents before children, sorted."""
    out: list[tuple[str, os.stat_result]] = []

    def visit(rel: str) -> None:
        here = root / rel if rel else root
        with os.scandir(here) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(root / child)
            out.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                visit(child)

    visit("")
    return out


def backup_tree(repo: Repository, root: Path, *, volume: str, parent: Manifest | None = None,
                labels: Mapping[str, str] | None = None, workers: int = 8,
                progress: Progress | None = None, origin: str = "") -> Manifest:
    """Back up the directory tree at ``root`` and return the committed manifest
    (``origin``: who asked for it, recorded for retention, format §6.2)."""
    if not root.is_dir():
        raise NotFound(f"directory {root} does not exist")
    cs = repo.chunk_size
    codec = repo.codec
    chunking = chunking_for(repo)
    previous: dict[str, dict[str, Any]] = {}
    if parent is not None and parent.kind == "tree" and parent.chunk_size == cs \
            and parent.chunking == chunking:
        previous = {e["path"]: e for e in parent.tree or ()}
    with Lock(repo, "shared") as lock:
        known = chunkstore.known_chunks(repo)
        sink = chunkstore.open_sink(repo, known)  # format 1 objects or format 2 packs
        try:
            listing = _walk(root)
        except OSError as exc:
            raise Unavailable(f"reading directory tree {root}: {exc}") from exc
        total = sum(st.st_size for _, st in listing if stat.S_ISREG(st.st_mode))
        state = {"done": 0, "read": 0, "new": 0, "stored": 0, "chunks_new": 0}
        mutex = threading.Lock()
        slots = threading.Semaphore(2 * workers)
        entries: list[dict[str, Any]] = []

        def process(data: bytes) -> bytes | None:
            try:
                if chunking is not None and _is_zero(data):
                    return None  # variable lengths: a zero id per length would cost a hash each
                cid = codec.chunk_id(data)
                if chunking is None and cid == codec.zero_id(len(data)):
                    return None
                if sink.claim(cid):
                    blob = codec.encode(blob_key(cid), data)
                    sink.store(cid, blob)
                    with mutex:
                        state["new"] += len(data)
                        state["stored"] += len(blob)
                        state["chunks_new"] += 1
                with mutex:
                    state["done"] += len(data)
                    if progress is not None:
                        progress(state["done"], total)
                return cid
            finally:
                slots.release()

        with ThreadPoolExecutor(workers, thread_name_prefix="tree") as pool:
            files: list[tuple[dict[str, Any], list[tuple[int, int, Future[bytes | None]]]]] = []
            for rel, st in listing:
                entry: dict[str, Any] = {
                    "path": rel, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                    "mtime_ns": st.st_mtime_ns, "size": 0, "target": None, "chunks": [],
                }
                if stat.S_ISDIR(st.st_mode):
                    entry["type"] = "dir"
                elif stat.S_ISLNK(st.st_mode):
                    entry["type"] = "symlink"
                    entry["target"] = os.readlink(root / rel)
                elif stat.S_ISREG(st.st_mode):
                    entry["type"] = "file"
                    entry["size"] = st.st_size
                    entry["ino"] = st.st_ino
                    old = previous.get(rel)
                    if old and old.get("type") == "file" and old["size"] == st.st_size \
                            and old["mtime_ns"] == st.st_mtime_ns and old.get("ino") == st.st_ino:
                        entry["chunks"] = old["chunks"]
                        with mutex:
                            state["done"] += st.st_size
                    else:
                        read = _read_file if chunking is None else _cut_file
                        files.append((entry, read(root / rel, st.st_size, cs, chunking, pool, process,
                                                  slots, state, mutex)))
                else:
                    log.info("tree backup skips special file path=%s", rel)
                    continue
                entries.append(entry)
            for entry, futures in files:
                done = [(off, length, f.result()) for off, length, f in futures]
                if chunking is None:
                    entry["chunks"] = [[off, cid.hex()] for off, _, cid in done if cid is not None]
                else:
                    entry["chunks"] = [[off, cid.hex(), length] for off, length, cid in done
                                       if cid is not None]
        m = Manifest(
            backup_id=new_backup_id(), volume=volume, size=total, chunk_size=cs, created=time.time(),
            offsets=array("Q"), ids=b"", kind="tree",
            parent=parent.backup_id if previous and parent is not None else None,
            host=socket.gethostname(), labels=dict(labels or {}), tree=entries,
            stats=Stats(bytes_read=state["read"], bytes_new=state["new"], stored_new=state["stored"],
                        chunks=sum(len(e["chunks"]) for e in entries), chunks_new=state["chunks_new"]),
            origin=origin, chunking=chunking,
        )
        try:
            sink.finish()  # every chunk stored and findable before the manifest
        finally:
            sink.close()
        lock.check_alive()
        repo.save_manifest(m)
        return m


_Futures = list[tuple[int, int, Future[bytes | None]]]


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise Unavailable(f"cannot read {path}: {exc.strerror}") from exc


def _read_file(path: Path, size: int, cs: int, chunking: dict[str, Any] | None, pool: ThreadPoolExecutor,
               process: Callable[[bytes], bytes | None], slots: threading.Semaphore,
               state: dict[str, int], mutex: threading.Lock) -> _Futures:
    """Fixed chunking: aligned ``cs`` slices, each handed to ``process`` as it is read."""
    futures: _Futures = []
    fd = _open(path)
    try:
        for off in range(0, size, cs):
            want = min(cs, size - off)
            data = os.pread(fd, want, off)
            if len(data) < want:  # shrank while we read (a live tree): keep the declared size
                data += bytes(want - len(data))
            with mutex:
                state["read"] += len(data)
            slots.acquire()
            futures.append((off, want, pool.submit(process, data)))
    finally:
        os.close(fd)
    return futures


def _cut_file(path: Path, size: int, cs: int, chunking: dict[str, Any] | None,
              pool: ThreadPoolExecutor, process: Callable[[bytes], bytes | None],
              slots: threading.Semaphore, state: dict[str, int], mutex: threading.Lock) -> _Futures:
    """Content-defined chunking: the file streamed through FastCDC ``CDC_READ`` bytes at a
    time, each chunk copied out and handed to ``process``. A file that shrank while it was
    read keeps its listed size; its missing tail restores as zeros, as with fixed slices."""
    assert chunking is not None
    cutter = FastCDC(int(chunking["avg"]), min_size=int(chunking["min"]),
                     max_size=int(chunking["max"]))
    futures: _Futures = []
    fd = _open(path)
    try:
        reader = _Bounded(fd, size)
        try:
            for chunk in cutter.cut_stream(reader):
                data = bytes(chunk.data)  # the view is reused for the next chunk
                with mutex:
                    state["read"] += len(data)
                slots.acquire()
                futures.append((int(chunk.offset), len(data), pool.submit(process, data)))
        except OSError as exc:
            raise Unavailable(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return futures


def restore_tree(repo: Repository, backup_id: str, target: Path, *, parallel: int = 8) -> Manifest:
    """Recreate the tree under ``target`` (must not exist); built beside it and renamed in."""
    m = repo.load_manifest(backup_id)
    if m.kind != "tree":
        raise InvalidArgument(f"backup {backup_id} is a {m.kind} backup, not a file tree")
    if target.exists():
        raise AlreadyExists(f"restore target {target} already exists")
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        raise AlreadyExists(f"{partial} exists: an earlier restore was interrupted; remove it")
    entries = m.tree or []
    for e in entries:
        parts = str(e["path"]).split("/")
        if str(e["path"]).startswith("/") or ".." in parts or "" in parts:
            raise InvalidArgument(f"backup {backup_id}: unsafe path {e['path']!r}")
    with Lock(repo, "shared"):
        try:
            partial.mkdir()
            with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="tree-restore") as pool:
                jobs: list[Future[None]] = []
                for e in entries:
                    dest = partial / e["path"]
                    if e["type"] == "dir":
                        dest.mkdir()
                    elif e["type"] == "symlink":
                        os.symlink(e["target"], dest)
                    elif e["type"] == "file":
                        # by path, not ftruncate: smbnetfs (SMB) answers EIO to ftruncate
                        dest.touch(exist_ok=False)
                        os.truncate(dest, int(e["size"]))
                        jobs.extend(pool.submit(_restore_chunk, repo, dest, off, cid, length)
                                    for off, cid, length in m.file_chunks(e))
                for job in jobs:
                    job.result()
            for e in entries:  # durable before the rename publishes the tree
                if e["type"] == "file":
                    fd = os.open(partial / e["path"], os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            for e in reversed(entries):  # children before parents: directory mtimes stick
                dest = partial / e["path"]
                if e["type"] == "symlink":
                    os.lchown(dest, e["uid"], e["gid"])
                    continue
                os.chown(dest, e["uid"], e["gid"])
                os.chmod(dest, e["mode"])
                os.utime(dest, ns=(e["mtime_ns"], e["mtime_ns"]))
            os.rename(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return m


def _restore_chunk(repo: Repository, dest: Path, off: int, cid: bytes, length: int) -> None:
    data = chunkstore.read_chunk(repo, cid, length)
    fd = os.open(dest, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        pos = 0
        while pos < length:
            pos += os.pwrite(fd, view[pos:], off + pos)
    finally:
        os.close(fd)
