"""The one place where Statehold errors become gRPC status codes, and per-volume locks.

Every servicer method is wrapped by :func:`rpc`. It

* takes the per-object lock named by ``lock`` (a second call on the same volume while one
  is in flight is answered ABORTED at once, as the CSI spec asks, instead of queueing);
* maps the ``statehold.errors`` tree onto gRPC codes (:data:`CODES`, from
  ``statehold.grpcerrors``, which the agent answers with too);
* turns anything unexpected into INTERNAL with a log line, so a bug never kills a worker
  thread or leaks a traceback to the CO.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import grpc

from statehold import errors
from statehold.grpcerrors import CODES, code_for

__all__ = ["CODES", "HasLocks", "VolumeLocks", "code_for", "rpc"]

log = logging.getLogger("statehold.csi")


class VolumeLocks:
    """Non-blocking named locks: one operation per volume (or snapshot) id at a time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: set[str] = set()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key`` for the block; Aborted at once if another call holds it."""
        with self._guard:
            if key in self._busy:
                raise errors.Aborted(f"an operation on {key!r} is already in progress")
            self._busy.add(key)
        try:
            yield
        finally:
            with self._guard:
                self._busy.discard(key)

    def busy(self) -> frozenset[str]:
        with self._guard:
            return frozenset(self._busy)


class HasLocks(Protocol):
    locks: VolumeLocks


S = TypeVar("S", bound=HasLocks)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[S, Req, grpc.ServicerContext], Resp]


def rpc(
    lock: Callable[[Any], str] | None = None,
) -> Callable[[Method[S, Req, Resp]], Method[S, Req, Resp]]:
    """Decorate a servicer method: lock, run, map errors to gRPC codes.

    ``lock(request)`` names the object to lock; an empty name (a request missing its id,
    which validation will refuse) takes no lock.
    """

    def decorate(fn: Method[S, Req, Resp]) -> Method[S, Req, Resp]:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
            started = time.monotonic()
            code: grpc.StatusCode | None = None
            message = key = ""
            try:
                key = lock(request) if lock is not None else ""
                if key:
                    with self.locks.hold(key):
                        return fn(self, request, context)
                return fn(self, request, context)
            except errors.StateholdError as exc:
                code, message = code_for(exc), str(exc) or type(exc).__name__
            except Exception as exc:  # a bug: answer INTERNAL, keep the worker alive
                log.exception("rpc=%s internal error", name)
                code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
            finally:
                log.info(
                    "rpc=%s object=%s code=%s ms=%.1f%s", name, key or "-",
                    (code or grpc.StatusCode.OK).name, (time.monotonic() - started) * 1000,
                    f" error={message!r}" if code else "",
                )
            context.abort(code, message)
            raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

        return wrapper

    return decorate
