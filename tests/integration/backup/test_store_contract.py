"""The one store suite: every Store implementation must pass it (memory, directory, S3)."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.retry import Backoff
from statehold.backup.s3store import S3Config, S3Store
from statehold.backup.store import MemoryStore, Store
from statehold.errors import InvalidArgument, NotFound, Unavailable


@pytest.fixture(params=["memory", "directory", "s3"])
def store(request: pytest.FixtureRequest, scratch: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "directory":
        yield DirectoryStore(scratch / "repo")
    else:
        config: S3Config = request.getfixturevalue("s3_config")
        # small multipart threshold so the suite exercises multipart uploads too
        yield S3Store(dataclasses.replace(config, multipart_threshold=6 << 20, part_size=5 << 20))


def test_put_then_get_returns_the_same_bytes(store: Store) -> None:
    store.put("chunks/ab/abcdef", b"hello")
    assert store.get("chunks/ab/abcdef") == b"hello"
    assert store.exists("chunks/ab/abcdef")


def test_get_of_a_missing_key_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get("manifests/nothing-here")
    assert not store.exists("manifests/nothing-here")


def test_put_is_idempotent_and_replaces(store: Store) -> None:
    store.put("config", b"one")
    store.put("config", b"one")
    store.put("config", b"two")
    assert store.get("config") == b"two"
    assert [i.key for i in store.list("config")] == ["config"]


def test_put_accepts_a_memoryview(store: Store) -> None:
    buf = bytearray(b"0123456789")
    store.put("locks/x", memoryview(buf)[2:6])
    assert store.get("locks/x") == b"2345"


def test_list_returns_exactly_the_keys_under_a_prefix_with_sizes(store: Store) -> None:
    store.put("chunks/aa/aa1", b"1")
    store.put("chunks/aa/aa2", b"22")
    store.put("chunks/bb/bb1", b"333")
    store.put("manifests/m1", b"4444")
    got = {i.key: i.size for i in store.list("chunks/")}
    assert got == {"chunks/aa/aa1": 1, "chunks/aa/aa2": 2, "chunks/bb/bb1": 3}
    assert {i.key for i in store.list("chunks/aa/")} == {"chunks/aa/aa1", "chunks/aa/aa2"}
    assert {i.key for i in store.list("")} == {"chunks/aa/aa1", "chunks/aa/aa2", "chunks/bb/bb1",
                                               "manifests/m1"}
    assert list(store.list("nothing/")) == []
    assert all(i.mtime > 0 for i in store.list(""))


def test_delete_is_idempotent(store: Store) -> None:
    store.put("manifests/m", b"x")
    store.delete("manifests/m")
    store.delete("manifests/m")
    with pytest.raises(NotFound):
        store.get("manifests/m")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/../b", "sp ace", "a/"])
def test_bad_keys_are_invalid_argument(store: Store, key: str) -> None:
    with pytest.raises(InvalidArgument):
        store.put(key, b"x")


def test_large_objects_round_trip(store: Store) -> None:
    data = os.urandom(13 << 20)
    store.put("manifests/big", data)
    assert store.get("manifests/big") == data


def test_concurrent_puts_and_gets_from_threads(store: Store) -> None:
    blobs = {f"chunks/{i:02x}/{i:064x}": os.urandom(1000 + i) for i in range(48)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: store.put(*kv), blobs.items()))
        got = dict(zip(blobs, pool.map(store.get, blobs), strict=True))
    assert got == blobs
    assert {i.key for i in store.list("chunks/")} == set(blobs)


def test_directory_store_ignores_interrupted_writes(scratch: Path) -> None:
    store = DirectoryStore(scratch / "repo")
    store.put("chunks/aa/aa1", b"1")
    (scratch / "repo" / "chunks" / "aa" / "aa2~deadbeef").write_bytes(b"partial")
    assert [i.key for i in store.list("chunks/")] == ["chunks/aa/aa1"]


def test_unreachable_s3_is_retried_with_backoff_then_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slept: list[float] = []
    store = S3Store(S3Config(bucket="b", endpoint=f"http://127.0.0.1:{port}", access_key="a",
                             secret_key="s", connect_timeout=1),
                    backoff=Backoff(attempts=5, base=0.5, cap=3.0, sleep=slept.append))
    with pytest.raises(Unavailable, match="gave up after 5 attempts"):
        store.get("config")
    assert len(slept) == 4
    nominal = [0.5, 1.0, 2.0, 3.0]
    assert all(n / 2 <= d <= n for d, n in zip(slept, nominal, strict=True))


def test_directory_batches_are_invisible_until_commit_and_stale_ones_are_removed(scratch: Path) -> None:
    store = DirectoryStore(scratch / "repo")
    store.put_later("chunks/aa/aa1", b"1")
    store.put_later("chunks/bb/bb1", b"2")
    assert list(store.list("chunks/")) == [] and not store.exists("chunks/aa/aa1")
    assert store.commit() == 2
    assert store.get("chunks/aa/aa1") == b"1" and store.get("chunks/bb/bb1") == b"2"
    assert store.commit() == 0
    store.put_later("chunks/cc/cc1", b"3")  # a writer that dies before commit
    fresh = DirectoryStore(scratch / "repo")
    assert fresh.remove_stale(older_than=3600) == 0
    assert fresh.remove_stale(older_than=-1) == 1
    assert {i.key for i in fresh.list("")} == {"chunks/aa/aa1", "chunks/bb/bb1"}


def test_s3_server_errors_are_retried_then_succeed() -> None:
    """HTTP 503 twice, then the object: the store retries (no real sleep) and returns it."""
    import http.server
    import threading

    answers = [503, 503, 200]
    seen: list[str] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            code = answers.pop(0) if answers else 200
            body = b"payload" if code == 200 else b"<Error><Code>ServiceUnavailable</Code></Error>"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        slept: list[float] = []
        store = S3Store(S3Config(bucket="bkt", endpoint=f"http://127.0.0.1:{server.server_port}",
                                 access_key="a", secret_key="s"),
                        backoff=Backoff(attempts=4, base=0.5, sleep=slept.append))
        assert store.get("config") == b"payload"
        assert len(seen) == 3 and len(slept) == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_get_range_returns_the_bytes_asked_for_in_one_call(store: Store) -> None:
    data = os.urandom(3 << 20)
    store.put("packs/ab/abcd", data)
    assert store.get_range("packs/ab/abcd", 0, 10) == data[:10]
    assert store.get_range("packs/ab/abcd", 1 << 20, 5000) == data[1 << 20 : (1 << 20) + 5000]
    assert store.get_range("packs/ab/abcd", len(data) - 7, 7) == data[-7:]
    assert store.get_range("packs/ab/abcd", 0, len(data)) == data


def test_get_range_past_the_end_is_cut_short_and_a_missing_key_is_not_found(store: Store) -> None:
    store.put("packs/ab/short", b"0123456789")
    assert store.get_range("packs/ab/short", 6, 100) == b"6789"
    assert store.get_range("packs/ab/short", 10, 5) == b""
    assert store.get_range("packs/ab/short", 50, 5) == b""
    with pytest.raises(NotFound):
        store.get_range("packs/ab/missing", 0, 4)
    with pytest.raises(InvalidArgument):
        store.get_range("packs/ab/short", -1, 4)


@pytest.fixture(params=["directory", "s3"])
def range_store(request: pytest.FixtureRequest, scratch: Path) -> Store:
    """The stores that also read ranges into a caller's buffer (restores use it)."""
    if request.param == "directory":
        return DirectoryStore(scratch / "repo")
    config: S3Config = request.getfixturevalue("s3_config")
    return S3Store(config)


def test_get_range_into_fills_the_callers_buffer_like_get_range(range_store: Store) -> None:
    into = range_store.get_range_into  # type: ignore[attr-defined]
    data = os.urandom(3 << 20)
    range_store.put("packs/ab/abcd", data)
    buf = bytearray(4 << 20)
    for off, n in ((0, 10), (1 << 20, 5000), (len(data) - 7, 7), (0, len(data))):
        buf[:] = bytes(len(buf))
        assert into("packs/ab/abcd", off, memoryview(buf)[:n]) == n
        assert buf[:n] == data[off : off + n] and not any(buf[n : n + 64])
    # past the end: cut short; then empty; the connection is still good for the next read
    range_store.put("packs/ab/short", b"0123456789")
    assert into("packs/ab/short", 6, memoryview(buf)[:100]) == 4 and buf[:4] == b"6789"
    assert into("packs/ab/short", 50, memoryview(buf)[:5]) == 0
    assert range_store.get_range("packs/ab/abcd", 5, 3) == data[5:8]
    with pytest.raises(NotFound):
        into("packs/ab/missing", 0, memoryview(buf)[:4])
    with ThreadPoolExecutor(8) as pool:  # many at once through the shared connection pool
        bufs = [bytearray(1 << 20) for _ in range(8)]
        got = list(pool.map(lambda i: into("packs/ab/abcd", i << 18, memoryview(bufs[i])), range(8)))
    assert got == [1 << 20] * 8
    assert all(bufs[i] == data[i << 18 : (i << 18) + (1 << 20)] for i in range(8))
