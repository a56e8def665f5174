"""Format 2 restores through a store that reads ranges into the caller's buffers (as the
S3 store does): whole packs fetched in any order land at their offsets bit for bit, and a
read that fails part way leaves an error and no data, never a partial success."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from statehold.backup import extents
from statehold.backup.imagebackup import create_backup
from statehold.backup.packs import PACK_PREFIX
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.store import MemoryStore, check_range
from statehold.backup.verifying import verify
from statehold.errors import Unavailable

from .helpers import MiB, same_bytes, write_image


class IntoStore(MemoryStore):
    """The in-memory store with ``get_range_into``. ``hold``: the first whole-pack read
    waits until ``hold`` other reads have finished (completion out of order); ``fail_at``:
    the n-th whole-pack read (from 1) fails as S3 does after its retries."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = 0
        self.fail_at = 0
        self.cond = threading.Condition()
        self.started = 0
        self.finished: list[int] = []

    def get_range_into(self, key: str, offset: int, buf: memoryview) -> int:
        check_range(offset, len(buf))
        with self.cond:
            self.started += 1
            me = self.started
        try:
            if me == self.fail_at:
                raise Unavailable(f"get {key}: gave up after 6 attempts (injected)")
            if me == 1 and self.hold:
                deadline = time.monotonic() + 60
                with self.cond:
                    while len(self.finished) < self.hold and time.monotonic() < deadline:
                        self.cond.wait(deadline - time.monotonic())
            data = self.get_range(key, offset, len(buf))
            buf[: len(data)] = data
            return len(data)
        finally:
            with self.cond:
                self.finished.append(me)
                self.cond.notify_all()


def _image(path: Path) -> Path:
    rnd = random.Random(7)
    layout = [(0, rnd.randbytes(70 * MiB)),
              (72 * MiB, b"".join(b"log line %d status=ok\n" % i for i in range(800_000))[: 16 * MiB]),
              (90 * MiB, bytes(4 * MiB)), (96 * MiB, rnd.randbytes(3 * MiB + 1234))]
    return write_image(path, 100 * MiB, layout)


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[IntoStore, str, Path]:
    work = tmp_path_factory.mktemp("into")
    store = IntoStore()
    repo = Repository.init(store, "pw", version=2)  # its defaults: 256 KiB chunks, 16 MiB packs
    img = _image(work / "v.img")
    m = create_backup(repo, img, volume="p/v")
    assert sum(1 for _ in store.list(PACK_PREFIX)) >= 5
    return store, m.backup_id, img


def _fresh(store: IntoStore) -> Repository:
    store.hold, store.fail_at, store.started, store.finished = 0, 0, 0, []
    return Repository.open(store, "pw")


@pytest.mark.parametrize("existing", [False, True])
def test_packs_read_out_of_order_restore_bit_for_bit(backed_up: tuple[IntoStore, str, Path],
                                                     tmp_path: Path, existing: bool) -> None:
    store, bid, img = backed_up
    repo = _fresh(store)
    store.hold = 3  # the first pack's read returns after three later ones
    out = tmp_path / "out.img"
    if existing:  # a new volume's blank backing file, as the volume service restores into
        with open(out, "wb") as f:
            f.truncate(img.stat().st_size)
    restore_image(repo, bid, out, existing=existing)
    assert store.finished.index(1) >= 3, store.finished
    assert same_bytes(img, out)
    assert not any(off <= 90 * MiB < off + n for off, n in extents.data_ranges(out))  # zeros: holes


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_failing_mid_restore_is_an_error_and_leaves_no_data(backed_up: tuple[IntoStore, str, Path],
                                                                   tmp_path: Path, existing: bool) -> None:
    store, bid, img = backed_up
    repo = _fresh(store)
    store.fail_at = 3
    out = tmp_path / "out.img"
    size = img.stat().st_size
    if existing:
        with open(out, "wb") as f:
            f.truncate(size)
    with pytest.raises(Unavailable, match="injected"):
        restore_image(repo, bid, out, existing=existing)
    assert store.started >= 3
    if existing:
        assert out.stat().st_size == size and extents.data_ranges(out) == []
    else:
        assert not out.exists() and not (tmp_path / "out.img.partial").exists()
    again = tmp_path / "again.img"
    restore_image(_fresh(store), bid, again)  # nothing left behind that blocks a retry
    assert same_bytes(img, again)


def test_deep_verify_reads_through_the_same_buffers(backed_up: tuple[IntoStore, str, Path]) -> None:
    store, _, _ = backed_up
    report = verify(_fresh(store), deep=True)
    assert report.ok, report.problems
    assert store.started >= 5
