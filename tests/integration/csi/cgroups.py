"""A test-owned cgroup directory ("scope") in the hierarchy that holds this host's block
controller, and processes started inside its child cgroups.

This host mounts cgroup v1 ``blkio`` at ``/sys/fs/cgroup/blkio`` beside a v2 hierarchy
without ``io``, so here every scope is a v1 one; on a unified host the same code makes a v2
scope (the ``io`` controller must then be enabled in the root's ``cgroup.subtree_control``,
which these tests never change: they fail, naming it). Which one a test covered is in
``Scope.hierarchy`` and in the test's report line.

Only what the scope made is touched: its directories (removed deepest first) and the
processes it started (tracked by pid, killed if still running). A process is moved back to
the hierarchy's root cgroup before its directory is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from statehold.engine import throttle
from statehold.engine.throttle import Hierarchy


@dataclass
class Held:
    """A process that has joined its cgroup and waits for ``go`` before exec'ing argv."""

    proc: subprocess.Popen[str]
    cgroup: Path

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()  # communicate() closes it

    def output(self, timeout: float = 300.0) -> str:
        out, _err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"{self.proc.args} exited {self.proc.returncode}: {_err}"
        return out


@dataclass
class Scope:
    hierarchy: Hierarchy
    path: Path
    children: list[Path] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)

    @property
    def relative(self) -> str:
        return str(self.path.relative_to(self.hierarchy.root))

    def child(self, name: str) -> Path:
        path = self.path / name
        path.mkdir()
        self.children.append(path)
        return path

    def hold(self, cgroup: Path, argv: Sequence[str], *, hide: Sequence[Path] = ()) -> Held:
        """Start ``argv`` inside ``cgroup``: the shell joins it, says so on stdout (read here,
        so when this returns the process is in the cgroup), then waits for :meth:`Held.go`.
        With ``hide``, it first moves to a mount namespace of its own without those mounts
        (a container that does not mount the volume, like a pod's sandbox)."""
        if hide:
            inner = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'for m in "$@"; do umount -l "$m" || exit 1; done; echo joined && read go && exec '
                     + shlex.join(argv), "sh", *map(str, hide)]
        else:
            inner = ["sh", "-c", 'echo joined && read go && exec "$@"', "sh", *argv]
        proc = subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup),
                                 *inner], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        held = Held(proc, cgroup)
        self.held.append(held)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != "joined\n":
            proc.wait(timeout=30)
            raise AssertionError(f"could not join {cgroup}: {proc.stderr.read() if proc.stderr else ''}")
        return held

    def write_config(self, home: Path) -> None:
        """Point Statehold at this scope: ``<home>/qos.json``."""
        (home / throttle.CONFIG).write_text(json.dumps({
            "hierarchy": str(self.hierarchy.root), "version": self.hierarchy.version,
            "scopes": [self.relative]}))

    def release(self) -> None:
        for held in self.held:
            if held.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(held.proc.pid, signal.SIGKILL)
                held.proc.wait(timeout=30)
        for cgroup in [*reversed(self.children), self.path]:
            for pid in throttle.procs(cgroup):  # only ours can be here: move them out first
                with contextlib.suppress(OSError):
                    (self.hierarchy.root / "cgroup.procs").write_text(str(pid))
            with contextlib.suppress(FileNotFoundError):
                cgroup.rmdir()


def block_hierarchy() -> Hierarchy:
    found = throttle.detect()
    if not found:
        pytest.fail("no cgroup hierarchy on this host holds the io (v2) or blkio (v1) controller")
    hierarchy = found[0]
    if hierarchy.version == 2 and "io" not in (hierarchy.root / "cgroup.subtree_control").read_text().split():
        pytest.fail(f"the io controller is not enabled in {hierarchy.root}/cgroup.subtree_control; "
                    "these tests do not change the host's root cgroup")
    return hierarchy


@contextlib.contextmanager
def cgroup_scope() -> Iterator[Scope]:
    hierarchy = block_hierarchy()
    path = hierarchy.root / f"statehold-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    scope = Scope(hierarchy, path)
    try:
        yield scope
    finally:
        scope.release()


def fio(target: Path, *, rw: str = "randwrite", bs: str = "4k", ios: int, size: str = "64M",
        name: str = "job") -> list[str]:
    """fio doing exactly ``ios`` direct I/Os of ``bs`` on ``target`` (an existing file)."""
    return ["fio", f"--name={name}", f"--filename={target}", f"--rw={rw}", f"--bs={bs}", "--direct=1",
            "--ioengine=psync", f"--number_ios={ios}", f"--size={size}", "--output-format=json"]


def fio_result(output: str) -> dict[str, Any]:
    """The one job's write (or read) side: ``total_ios``, ``runtime`` (ms), ``iops``, ``bw_bytes``."""
    job = json.loads(output)["jobs"][0]
    side: dict[str, Any] = job["write"] if job["write"]["total_ios"] else job["read"]
    return side
