"""A bounded hand-off of frames from a gRPC handler thread to the thread applying them.

The handler reads the stream and :meth:`Feed.put`\\ s each frame; the worker iterates
:meth:`Feed.frames`. When the worker (the disk) is slower than the network, ``put`` blocks
once ``capacity`` frames wait, the handler stops reading, and gRPC's flow control pushes
back on the sender: memory stays bounded at ``capacity`` frames (each about 1 MiB).

The end of a stream is explicit: :meth:`close` after the last frame lets ``frames`` end;
:meth:`abort` (the stream was cut, the call cancelled) makes ``frames`` raise Unavailable at
once, even with frames still queued, so the consumer never mistakes a cut stream for a
complete one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from statehold.errors import Unavailable


class Feed:
    def __init__(self, capacity: int = 8, *, on_frame: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._items: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted: str | None = None
        self._on_frame = on_frame
        self.received = 0
        """Frames put so far."""

    def put(self, data: bytes, *, alive: Callable[[], bool], poll: float = 0.25) -> bool:
        """Queue one frame, waiting while the feed is full; False (frame dropped) as soon as
        ``alive()`` says the stream or the consumer is gone. ``poll`` bounds how late that
        is noticed while waiting; it is not a delay."""
        with self._cond:
            while len(self._items) >= self._capacity and self._aborted is None:
                if not alive():
                    return False
                self._cond.wait(poll)
            if self._aborted is not None or self._closed:
                return False
            self._items.append(data)
            self.received += 1
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """The stream ended normally: ``frames`` ends after the queued frames."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """The stream was cut: ``frames`` raises Unavailable(reason) (what the replication core
        calls a cut stream), queued frames are dropped."""
        with self._cond:
            if self._aborted is None:
                self._aborted = reason
            self._items.clear()
            self._cond.notify_all()

    def frames(self) -> Iterator[bytes]:
        """The frames in order, for the consuming thread (blocking)."""
        index = 0
        while True:
            with self._cond:
                while not self._items and not self._closed and self._aborted is None:
                    self._cond.wait()
                if self._aborted is not None:
                    raise Unavailable(self._aborted)
                if not self._items:
                    return  # closed and drained
                data = self._items.popleft()
                self._cond.notify_all()
            if self._on_frame is not None:
                self._on_frame(index)
            index += 1
            yield data



class Prefetch:
    """``source``'s items, produced up to ``depth`` ahead by a thread of their own, so that
    reading and hashing the next frames (which release the GIL) overlaps sending this one.

    Iterate it once (from any thread): an error raised by ``source`` is raised there, after
    the items produced before it. :meth:`cancel` (from any thread, always, when done) stops
    the producer, which closes ``source`` itself (the only thread that ever iterates it),
    makes a consumer still waiting raise Unavailable, and waits for the producer: the
    snapshot the source reads is released when it returns.
    """

    def __init__(self, source: Iterator[bytes], depth: int = 4, *, name: str = "prefetch") -> None:
        self._source = source
        self._feed = Feed(depth)
        self._failure: list[BaseException] = []
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, name=name, daemon=True)
        self._producer.start()

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._feed.put(item, alive=lambda: not self._stop.is_set()):
                    break
        except BaseException as exc:  # handed to the consumer, in order
            self._failure.append(exc)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
            self._feed.close()

    def __iter__(self) -> Iterator[bytes]:
        yield from self._feed.frames()
        if self._failure:
            raise self._failure[0]

    def cancel(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._feed.abort("the stream was abandoned")  # wakes a producer waiting for room
        self._producer.join(timeout)
