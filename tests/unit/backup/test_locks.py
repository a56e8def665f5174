"""Repository locks: shared vs exclusive, expiry, stale-lock cleanup (fake clock, no sleep)."""

from __future__ import annotations

import pytest

from statehold.backup.collecting import gc
from statehold.backup.locks import Lock, live_locks
from statehold.backup.repository import Repository
from statehold.backup.store import MemoryStore
from statehold.errors import Aborted


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStore(), "pw")


def test_shared_locks_coexist_and_exclude_an_exclusive_one(repo: Repository) -> None:
    with Lock(repo, "shared"), Lock(repo, "shared"):
        assert len(live_locks(repo, 0)) == 2
        with pytest.raises(Aborted, match="shared"):
            Lock(repo, "exclusive").acquire()
    with Lock(repo, "exclusive"), pytest.raises(Aborted, match="exclusive"):
        Lock(repo, "exclusive").acquire()
    assert live_locks(repo, 0) == []


def test_an_expired_lock_refuses_to_commit_and_no_longer_blocks(repo: Repository) -> None:
    clock = Clock()
    dead = Lock(repo, "shared", ttl=60, clock=clock).acquire()  # a process that stopped refreshing
    dead._stop.set()
    clock.now += 61
    with pytest.raises(Aborted, match="expired"):
        dead.check_alive()
    with Lock(repo, "exclusive", clock=clock):
        pass  # the dead shared lock does not block gc any more


def test_gc_removes_stale_locks(repo: Repository) -> None:
    clock = Clock()
    Lock(repo, "shared", ttl=60, clock=clock).acquire()._stop.set()
    assert gc(repo, clock=lambda: clock.now + 3600).locks_removed == 1
    assert list(repo.store.list("locks/")) == []
