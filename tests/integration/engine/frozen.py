"""Helpers for tests that freeze filesystems: is anything left frozen, are our children gone.

A frozen filesystem blocks every writer until someone thaws it, so a check must never
write from the test process itself: :func:`frozen_targets` writes from child processes
with a deadline, thaws (only the targets it was given) what did not answer so the children
can end, and reports those targets. A correct run answers in milliseconds; the deadline
only keeps a bug from hanging the suite.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from statehold.engine import freeze

DEADLINE = 30.0

_WRITE = (
    "import os, sys\n"
    "path = os.path.join(sys.argv[1], '.statehold-thaw-probe')\n"
    "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
    "os.write(fd, b'x' * 4096)\n"
    "os.fsync(fd)\n"
    "os.close(fd)\n"
    "os.unlink(path)\n"
)


def frozen_targets(targets: Sequence[str], deadline: float = DEADLINE) -> list[str]:
    """The mount points on which a write + fsync did not complete before the deadline."""
    children = {t: subprocess.Popen([sys.executable, "-c", _WRITE, t]) for t in targets}
    end = time.monotonic() + deadline
    stuck = []
    for target, child in children.items():
        try:
            code = child.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(target)
            freeze.thaw(target)  # ours: let the writer finish, then report
            code = child.wait()
        assert code == 0, f"probe write on {target} failed with {code}"
    return stuck


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def wait_group_gone(pgid: int, deadline: float = DEADLINE) -> list[int]:
    """Wait until every process of our child's group ``pgid`` has exited; those still
    alive at the deadline."""
    end = time.monotonic() + deadline
    for pid in group_members(pgid):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, end - time.monotonic()))
        finally:
            os.close(fd)
    return group_members(pgid)


def children_running(module: str) -> list[int]:
    """Our own child processes (parent pid: this process) whose command line names
    ``module``, from /proc."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and module.encode() in cmdline:
            found.append(int(entry.name))
    return found
