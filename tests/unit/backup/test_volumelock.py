"""One backup of a volume at a time: threads of one process wait for each other, and so
does a process for another holding the volume's file lock (a CLI beside the agent)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from statehold.backup.volumelock import volume_lock
from statehold.errors import NotFound


def test_a_second_thread_waits_for_the_first_backup_of_the_same_volume() -> None:
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with volume_lock("p/v"):
            inside.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(5)
    with volume_lock("p/v"):
        order.append("second")
    t.join()
    assert order == ["first done", "second"]


def test_other_volumes_do_not_wait() -> None:
    done = threading.Event()

    def other() -> None:
        with volume_lock("p/b"):
            done.set()

    with volume_lock("p/a"):
        t = threading.Thread(target=other)
        t.start()
        assert done.wait(5)
        t.join()


def test_a_process_waits_while_another_holds_the_volumes_file_lock(tmp_path: Path) -> None:
    image = tmp_path / "v.img"
    image.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(image)!r}, os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got = threading.Event()

        def take() -> None:
            with volume_lock("p/v", image):
                got.set()

        t = threading.Thread(target=take)
        t.start()
        assert not got.wait(0.5)  # the other process holds it
        assert holder.stdin is not None
        holder.stdin.close()      # the holder exits; the kernel drops its lock
        assert got.wait(10)
        t.join()
    finally:
        holder.kill()
        holder.wait()


def test_a_missing_volume_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound), volume_lock("p/gone", tmp_path / "gone.img"):
        pass
