"""A store in a directory: any mount (local disk, NFS, a USB drive).

Each object is one file at ``<root>/<key>``. Atomic visibility comes from writing a
temporary file next to the target (``<name>~<random>``, a name no key can have), fsyncing
it, renaming it over the target and fsyncing the directory: a crash leaves either the old
object, the new one, or a stray temporary that ``list`` ignores.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from statehold.backup.store import ObjectInfo, check_key, check_range
from statehold.engine.files import fsync_dir
from statehold.errors import NotFound, OutOfCapacity, PermissionDenied, StateholdError, Unavailable

_TMP_MARK = "~"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _syncfs(path: Path) -> None:
    """One barrier for the whole filesystem holding ``path`` (Python has no os.syncfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _translate(exc: OSError, what: str) -> StateholdError:
    if exc.errno == errno.ENOENT:
        return NotFound(f"{what}: not found")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfCapacity(f"{what}: {exc.strerror}")
    return Unavailable(f"{what}: {exc.strerror or exc}")


class DirectoryStore:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root)
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise NotFound(f"backup directory {self.root} does not exist")
        except OSError as exc:
            raise _translate(exc, f"directory {self.root}") from exc
        self._made: set[Path] = set()
        self._staged: list[tuple[Path, Path]] = []
        self._staged_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def describe(self) -> str:
        return f"dir://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_tmp(self, key: str, data: bytes | memoryview, *, sync: bool) -> tuple[Path, Path]:
        path = self._path(key)
        parent = path.parent
        tmp = parent / f"{path.name}{_TMP_MARK}{secrets.token_hex(6)}"
        try:
            if parent not in self._made:
                parent.mkdir(parents=True, exist_ok=True)
                self._made.add(parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc, f"put {key} into {self.describe()}") from exc
        return tmp, path

    def put(self, key: str, data: bytes | memoryview) -> None:
        tmp, path = self._write_tmp(key, data, sync=True)
        try:
            os.rename(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc, f"put {key} into {self.describe()}") from exc

    def put_later(self, key: str, data: bytes | memoryview) -> None:
        """Write without a barrier; invisible (a temporary name) until commit()."""
        staged = self._write_tmp(key, data, sync=False)
        with self._staged_lock:
            self._staged.append(staged)

    def commit(self) -> int:
        """syncfs once (every staged file durable), rename them into place, sync again."""
        # One commit at a time: a commit that finds nothing staged must still wait for one
        # in progress, which may be publishing this caller's objects.
        with self._commit_lock:
            with self._staged_lock:
                staged, self._staged = self._staged, []
            if not staged:
                return 0
            try:
                _syncfs(self.root)
                for tmp, path in staged:
                    os.rename(tmp, path)
                _syncfs(self.root)
            except OSError as exc:
                raise _translate(exc, f"commit to {self.describe()}") from exc
            return len(staged)

    def remove_stale(self, older_than: float) -> int:
        """Delete temporaries of writers that died before commit (gc calls this)."""
        n = 0
        cutoff = time.time() - older_than
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if _TMP_MARK in name:
                    p = Path(dirpath) / name
                    try:
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            n += 1
                    except FileNotFoundError:
                        continue
        return n

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise _translate(exc, f"object {key} in {self.describe()}") from exc

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[int]:
        """A read-only descriptor of ``key``'s file for ranged reads; an OSError opening or
        reading it becomes the store's error for that object."""
        where = f"object {key} in {self.describe()}"
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, where) from exc
        try:
            yield fd
        except OSError as exc:
            raise _translate(exc, where) from exc
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._reading(key) as fd:
            parts = []
            got = 0
            while got < length:
                piece = os.pread(fd, length - got, offset + got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
            return b"".join(parts)

    def get_range_into(self, key: str, offset: int, buf: memoryview) -> int:
        """:meth:`get_range` of ``len(buf)`` bytes read straight into ``buf`` (a restore's
        reused pack buffers: no fresh 16 MiB object per pack left in the threads' malloc
        arenas); the count read, fewer at the object's end."""
        check_range(offset, len(buf))
        with self._reading(key) as fd:
            got = 0
            while got < len(buf):
                n = os.preadv(fd, [buf[got:]], offset + got)
                if not n:
                    break
                got += n
            return got

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        if head:
            check_key(head)
        base = self.root / head if head else self.root
        if not base.is_dir():
            return
        try:
            for dirpath, _dirs, files in os.walk(base):
                rel_dir = os.path.relpath(dirpath, self.root)
                for name in files:
                    if _TMP_MARK in name:
                        continue
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while listing
                    yield ObjectInfo(key, st.st_size, st.st_mtime)
        except OSError as exc:
            raise _translate(exc, f"list {prefix} in {self.describe()}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise _translate(exc, f"delete {key} in {self.describe()}") from exc
