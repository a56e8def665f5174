"""The freeze keeper's ``timeout`` request (engine/freezekeeper.py): a spare keeper is
started before anyone knows the window it will be asked for, so its caller sets it; a bad
value is refused and the keeper keeps serving. A real keeper process, no filesystem."""

from __future__ import annotations

import subprocess

from statehold.engine import freezekeeper


def _ask(proc: subprocess.Popen[bytes], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((line + "\n").encode())
    proc.stdin.flush()
    return proc.stdout.readline().decode().strip()


def test_timeout_is_checked_and_set_before_the_first_freeze() -> None:
    proc = freezekeeper._spawn(())  # as a spare starts
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == "ready"
        for bad in ("abc", "0", "-1", "nan", "inf", ""):
            assert _ask(proc, f"timeout {bad}").startswith("error failed "), bad
        assert _ask(proc, "timeout 2.5") == "ok"
        verb, _first, _last, expired = _ask(proc, "thaw").split()
        assert (verb, expired) == ("thawed", "0")  # nothing was frozen: nothing expired
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
