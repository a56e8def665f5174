"""The spare process (engine/spare.py): taken when it matches and lives, replaced when it
does not, never two idle, never taken by a forked child, and nothing left running.

Real processes (a Python child that waits for end of file on its stdin), no stand-ins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from statehold.engine.spare import Spare

WAIT_FOR_EOF = "import sys; sys.stdin.buffer.read()"


def _spawn(key: tuple[str, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WAIT_FOR_EOF, *key],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)


def _gone(pid: int) -> bool:
    """Exited and reaped: no /proc entry (a zombie would still have one)."""
    return not os.path.exists(f"/proc/{pid}")


def _done(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()
    proc.wait(30)


@pytest.fixture
def spare() -> Iterator[Spare]:
    s = Spare(_spawn)
    try:
        yield s
    finally:
        s.drop()


def test_a_matching_live_spare_is_taken_then_restocked_once(spare: Spare) -> None:
    proc, was_spare = spare.take(("a",))
    assert not was_spare and spare.pid() is None  # nothing was waiting
    _done(proc)
    spare.restock(("a",))
    waiting = spare.pid()
    assert waiting is not None
    spare.restock(("a",))
    assert spare.pid() == waiting  # never two idle
    taken, was_spare = spare.take(("a",))
    assert was_spare and taken.pid == waiting and spare.pid() is None
    _done(taken)


def test_a_spare_for_another_key_is_ended_and_a_new_process_started(spare: Spare) -> None:
    spare.restock(("a",))
    old_pid = spare.pid()
    assert old_pid is not None
    proc, was_spare = spare.take(("b",))
    assert not was_spare and proc.pid != old_pid
    assert _gone(old_pid)  # killed and reaped: no idle process left behind
    assert proc.args[-1] == "b"
    _done(proc)


def test_a_dead_spare_is_replaced(spare: Spare) -> None:
    spare.restock(("a",))
    pid = spare.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, left for the spare to reap
    proc, was_spare = spare.take(("a",))
    assert not was_spare and proc.pid != pid
    assert _gone(pid)
    _done(proc)


def test_drop_ends_the_idle_spare(spare: Spare) -> None:
    spare.restock(("a",))
    pid = spare.pid()
    assert pid is not None
    spare.drop()
    assert spare.pid() is None and _gone(pid)


def test_a_forked_child_never_takes_its_parents_spare(spare: Spare) -> None:
    spare.restock(("a",))
    parent_spare = spare.pid()
    assert parent_spare is not None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it got, then leave at once
        code = 1
        try:
            os.close(read_end)
            assert spare.pid() is None  # not its own
            proc, was_spare = spare.take(("a",))
            os.write(write_end, f"{int(was_spare)} {proc.pid}".encode())
            proc.kill()
            proc.wait()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        was_spare, got = fh.read().decode().split()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert was_spare == "0" and int(got) != parent_spare
    assert spare.pid() == parent_spare  # still the parent's, still idle
