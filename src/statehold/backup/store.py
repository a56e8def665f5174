"""The store contract: the only thing a repository needs from where it keeps its objects.

Contract (every implementation, and the shared suite in tests/integration/backup):

- ``put(key, data)`` is atomic and idempotent: readers see no object or all of ``data``;
  when it returns the object is durable. Re-putting a key replaces it atomically.
- ``get(key)`` returns the whole object; a missing key raises :class:`NotFound`.
- ``get_range(key, offset, length)`` returns bytes ``[offset, min(offset+length, size))`` in
  one request (empty past the end); a missing key raises :class:`NotFound`. Format 2
  reads several chunks of a pack with one call.
- ``list(prefix)`` yields :class:`ObjectInfo` for every key starting with ``prefix`` that was
  completely put before the call started; order unspecified.
- ``delete(key)`` is idempotent (a missing key is fine). ``exists(key)`` never raises
  NotFound.
- Permanent errors: NotFound, PermissionDenied (credentials refused), InvalidArgument (bad
  key). Transient faults are retried inside the store (see :mod:`.retry`) and surface as
  :class:`Unavailable` once the retry budget is spent.
- Every method is safe to call from several threads at once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from statehold.errors import InvalidArgument, NotFound

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    """Seconds since the epoch at which the store last wrote the object (its own clock)."""


@runtime_checkable
class Store(Protocol):
    """A flat key -> bytes map; see the module docstring for the contract."""

    def put(self, key: str, data: bytes | memoryview) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str:
        """Where the store is, for messages (never credentials)."""
        ...


@runtime_checkable
class BatchingStore(Protocol):
    """Optional: stores where one durability barrier for many objects is much cheaper than
    one per object (a directory: one ``syncfs`` instead of two fsyncs per file).

    ``put_later(key, data)`` writes the object but does not make it visible yet;
    ``commit()`` makes every object put_later'd so far durable, then visible (atomically
    per object), and returns how many it published. Objects never committed (the writer
    died) stay invisible and are removed by gc. Writers MUST commit before relying on the
    objects (format §7: before the manifest).
    """

    def put_later(self, key: str, data: bytes | memoryview) -> None: ...

    def commit(self) -> int: ...


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, of a safe alphabet: no '..', no empty parts."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise InvalidArgument(f"invalid store key {key!r}")
    return key


def check_range(offset: int, length: int) -> None:
    """A range is a non-negative offset and a positive length."""
    if offset < 0 or length <= 0:
        raise InvalidArgument(f"invalid range: offset {offset}, length {length}")


class MemoryStore:
    """An in-process store: the reference implementation of the contract, for tests."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview) -> None:
        check_key(key)
        with self._lock:
            self._objects[key] = (bytes(data), time.time())

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            try:
                return self._objects[key][0]
            except KeyError:
                raise NotFound(f"object {key} not found in {self.describe()}") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self.get(key)[offset : offset + length]

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._objects

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(k, v) for k, v in self._objects.items() if k.startswith(prefix)]
        for key, (data, mtime) in items:
            yield ObjectInfo(key, len(data), mtime)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def describe(self) -> str:
        return "memory://"

    def set_mtime(self, key: str, mtime: float) -> None:
        """Test hook: age an object (gc grace periods) without waiting."""
        with self._lock:
            data, _ = self._objects[key]
            self._objects[key] = (data, mtime)
