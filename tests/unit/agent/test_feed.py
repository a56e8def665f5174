"""The bounded hand-off between a stream and its writer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from statehold.agent.feed import Feed, Prefetch
from statehold.errors import Corrupt, Unavailable


def test_frames_arrive_in_order_and_end_when_closed() -> None:
    feed = Feed(4)
    for i in range(3):
        assert feed.put(bytes([i]), alive=lambda: True)
    feed.close()
    assert list(feed.frames()) == [b"\x00", b"\x01", b"\x02"]


def test_a_full_feed_takes_no_more_until_the_writer_reads() -> None:
    feed = Feed(2)
    assert feed.put(b"a", alive=lambda: True) and feed.put(b"b", alive=lambda: True)
    asked: list[int] = []

    def gone_on_first_check() -> bool:
        asked.append(1)
        return False

    # full: the put waits, asks whether the stream is alive, and drops the frame when not
    assert not feed.put(b"c", alive=gone_on_first_check, poll=0.01)
    assert asked and feed.received == 2
    # once the writer took one, there is room again
    frames = feed.frames()
    assert next(frames) == b"a"
    assert feed.put(b"c", alive=lambda: True)
    feed.close()
    assert list(frames) == [b"b", b"c"]


def test_a_blocked_put_resumes_when_the_writer_reads() -> None:
    feed = Feed(1)
    assert feed.put(b"a", alive=lambda: True)
    waiting = threading.Event()
    done: list[bool] = []

    def alive() -> bool:
        waiting.set()
        return True

    t = threading.Thread(target=lambda: done.append(feed.put(b"b", alive=alive, poll=0.01)))
    t.start()
    assert waiting.wait(10)           # the put is waiting for room
    frames = feed.frames()
    assert next(frames) == b"a"       # ... which reading makes
    t.join(10)
    assert done == [True]
    feed.close()
    assert list(frames) == [b"b"]


def test_abort_makes_the_writer_raise_even_with_frames_queued() -> None:
    feed = Feed(4)
    feed.put(b"a", alive=lambda: True)
    feed.abort("cut after 1 frame")
    with pytest.raises(Unavailable, match="cut after 1 frame"):
        list(feed.frames())
    assert not feed.put(b"b", alive=lambda: True)


def test_abort_wakes_a_writer_waiting_for_frames() -> None:
    feed = Feed(4)
    raised: list[BaseException] = []

    def consume() -> None:
        try:
            list(feed.frames())
        except Unavailable as exc:
            raised.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    feed.abort("cancelled")
    t.join(10)
    assert len(raised) == 1



def test_prefetch_yields_everything_in_order() -> None:
    ahead = Prefetch(iter([b"a", b"b", b"c"]), depth=1)
    assert list(ahead) == [b"a", b"b", b"c"]
    ahead.cancel()


def test_prefetch_raises_the_source_error_after_its_items() -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        raise Corrupt("short read")

    got: list[bytes] = []
    ahead = Prefetch(source())
    with pytest.raises(Corrupt, match="short read"):
        for item in ahead:
            got.append(item)
    ahead.cancel()
    assert got == [b"a"]


def test_cancel_stops_and_closes_the_source_and_wakes_the_consumer() -> None:
    closed = threading.Event()

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    ahead = Prefetch(endless(), depth=2)
    items = iter(ahead)
    assert next(items) == b"x"
    ahead.cancel()  # joins the producer
    assert closed.is_set()
    with pytest.raises(Unavailable):
        list(items)
