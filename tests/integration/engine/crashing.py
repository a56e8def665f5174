"""The harness of the engine's crash tests, one copy for every pool layout.

A crash case runs one operation in ``crash_child.py``, which SIGKILLs itself at one step;
the test then opens a fresh Node on the same home (that runs recovery) and checks what is
left. What "consistent" means differs by layout (files or subvolumes), so each test module
passes its own ``assert_consistent``; the child, the restart, the data written and read
back by checksum, the freeze probe, the cleanup and the cases whose checks after the
restart are the same for every layout (create, clone, snapshot) live here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from statehold.engine import loop
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.steps import STEPS
from statehold.engine.types import FsType, MiB, PoolSpec, Source, SourceKind
from tests.fixtures.engine import close_node, engine_home_at

CHILD = Path(__file__).with_name("crash_child.py")


class Env:
    """A module's home and its current Node (replaced at every simulated restart)."""

    def __init__(self, home: Path, pool_name: str) -> None:
        self.home = home
        self.pool_name = pool_name
        self.node = Node(home)

    @property
    def pool(self) -> Pool:
        return self.node.pool(self.pool_name)

    def restart(self) -> list[str]:
        """Close the Node and open a new one, as a restarted process would: recovery runs."""
        self.node.close()
        self.node = Node(self.home)
        return self.node.recovered.get(self.pool_name, [])


@contextlib.contextmanager
def pool_env(spec: Callable[[Path], PoolSpec]) -> Iterator[Env]:
    """A fresh engine home with the one pool ``spec(home)`` describes; closed afterwards."""
    with engine_home_at() as home:
        pool = spec(home)
        env = Env(home, pool.name)
        try:
            env.node.create_pool(pool)
            yield env
        finally:
            close_node(env.node)


def run_child(env: Env, step: str, op: str, args: dict[str, object]) -> None:
    """Run ``op`` in a child that kills itself at ``step``; fail unless it died of that kill
    (a child that finishes means the step table names a step the operation never reaches)."""
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(env.home), env.pool_name, step, op, json.dumps(args)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"step {step} was never reached (rc={proc.returncode}): {proc.stderr[-2000:]}")


def write_data(mnt: Path, seed: str) -> str:
    """Write 1 MiB derived from ``seed`` durably into ``mnt/data.bin``; its checksum."""
    data = hashlib.sha256(seed.encode()).digest() * (MiB // 32)
    with open(mnt / "data.bin", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def checksum(mnt: Path) -> str:
    return hashlib.sha256((mnt / "data.bin").read_bytes()).hexdigest()


def not_frozen(target: str) -> bool:
    """Probe without blocking: freezing a frozen fs fails with EBUSY; else thaw again."""
    proc = subprocess.run(["fsfreeze", "--freeze", target], capture_output=True, check=False)
    if proc.returncode != 0:
        return False
    subprocess.run(["fsfreeze", "--unfreeze", target], capture_output=True, check=True)
    return True


def wait_thawed(target: str, seconds: float = 30.0) -> None:
    """The keeper notices its parent's death (end of file on its pipe) and thaws: poll."""
    deadline = time.monotonic() + seconds
    while not not_frozen(target):
        assert time.monotonic() < deadline, f"{target} still frozen {seconds:g} s after the crash"
        time.sleep(0.05)


@contextlib.contextmanager
def cleanup(env: Env, *names: str) -> Iterator[None]:
    """Remove this case's volumes and snapshots afterwards, whatever happened."""
    try:
        yield
    finally:
        pool = env.pool
        for snap in pool.list_snapshots():
            if snap.name in names:
                pool.delete_snapshot(snap.name)
        for vol in pool.list_volumes():
            if vol.name in names:
                for target in vol.mounts:
                    pool.unmount(vol.name, Path(target))
                pool.detach(vol.name)
                pool.delete_volume(vol.name)


def cases(op: str) -> list[tuple[int, str]]:
    """Every step of ``op``, numbered (the number keeps each case's names apart)."""
    return list(enumerate(STEPS[op]))


Check = Callable[[Pool], None]


def _mounted_with_data(env: Env, name: str, size: int) -> tuple[Path, str]:
    """A new ext4 volume mounted under the home, holding ``data.bin``; mount and checksum."""
    env.pool.create_volume(name, size, fs=FsType.EXT4)
    mnt = env.home / "mnt" / name
    env.pool.mount(name, mnt)
    return mnt, write_data(mnt, name)


def _clone_checksum(env: Env, name: str, size: int, source: Source) -> str:
    """Clone ``source`` into a new volume, mount it and read ``data.bin``'s checksum."""
    env.pool.create_volume(name, size, fs=FsType.EXT4, source=source)
    mnt = env.home / "mnt" / name
    env.pool.mount(name, mnt)
    return checksum(mnt)


def assert_no_stray_loops(pool: Pool, volumes: Iterable[str], snapshots: Iterable[str]) -> None:
    """No loop device under the pool backs anything but a recorded volume or snapshot."""
    known = ({str(pool.volume_path(n)) for n in volumes}
             | {str(pool.snapshot_path(n)) for n in snapshots})
    stray = {dev: b for dev, b in loop.under(pool.mountpoint).items() if b not in known}
    assert stray == {}, f"leaked loop devices: {stray}"


def layout_cases(consistent: Check, *, size: int, clone_size: int
                 ) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    """The create, clone and snapshot crash tests, whose checks after the restart are the same
    for every layout: a test module binds them to its ``test_crash_during_*`` names (pytest
    collects them there, with that module's ``env`` fixture), passing its layout's
    ``consistent`` check and the sizes it uses."""

    @pytest.mark.parametrize(("i", "step"), cases("create_volume"))
    def test_crash_during_create_volume(env: Env, i: int, step: str) -> None:
        """Killed at ``step``: recovery keeps the volume only if it committed, and the same
        request then succeeds (idempotent if it was kept)."""
        name = f"cv{i}"
        with cleanup(env, name):
            run_child(env, step, "create_volume", {"name": name, "size": size, "fs": "ext4"})
            env.restart()
            pool = env.pool
            consistent(pool)
            names = {v.name for v in pool.list_volumes()}
            assert (name in names) == (step == "create_volume.commit")
            again = pool.create_volume(name, size, fs=FsType.EXT4)
            assert again.size == size

    @pytest.mark.parametrize("kind", [SourceKind.SNAPSHOT, SourceKind.VOLUME])
    @pytest.mark.parametrize(("i", "step"), cases("clone"))
    def test_crash_during_clone(env: Env, i: int, step: str, kind: SourceKind) -> None:
        """From a snapshot, or from a mounted volume (frozen around the reflink): the source
        is thawed by its keeper before recovery and keeps its data; the clone exists only if
        it committed, and a retry clones the source's bytes."""
        src, snap, name = f"cls{i}{kind[0]}", f"clsnap{i}{kind[0]}", f"cl{i}{kind[0]}"
        with cleanup(env, src, snap, name):
            mnt, digest = _mounted_with_data(env, src, size)
            env.pool.create_snapshot(src, snap)
            origin = snap if kind is SourceKind.SNAPSHOT else src
            if kind is SourceKind.SNAPSHOT:
                write_data(mnt, "changed-after-snapshot")
            run_child(env, step, "clone",
                      {"name": name, "size": clone_size, "fs": "ext4", "kind": kind.value,
                       "source": origin})
            wait_thawed(str(mnt))  # by the freeze keeper, before any recovery runs
            env.restart()
            pool = env.pool
            consistent(pool)
            assert not_frozen(str(mnt))
            assert checksum(mnt) == digest or kind is SourceKind.SNAPSHOT
            names = {v.name for v in pool.list_volumes()}
            assert (name in names) == (step == "clone.commit")
            assert _clone_checksum(env, name, clone_size, Source(kind, origin)) == digest

    @pytest.mark.parametrize(("i", "step"), cases("create_snapshot"))
    def test_crash_during_snapshot(env: Env, i: int, step: str) -> None:
        """Of a mounted volume: thawed by the keeper before recovery, its data kept; the
        snapshot exists only if it committed, and a retry makes one that clones to the
        same bytes."""
        vol, snap, clone = f"sv{i}", f"ss{i}", f"sc{i}"
        with cleanup(env, vol, snap, clone):
            mnt, digest = _mounted_with_data(env, vol, size)
            run_child(env, step, "create_snapshot", {"volume": vol, "name": snap})
            # the freeze keeper thaws as soon as the engine dies, before any recovery runs
            wait_thawed(str(mnt))
            env.restart()
            pool = env.pool
            consistent(pool)
            assert not_frozen(str(mnt))
            assert checksum(mnt) == digest
            names = {s.name for s in pool.list_snapshots()}
            assert (snap in names) == (step == "snapshot.commit")
            pool.create_snapshot(vol, snap)
            assert _clone_checksum(env, clone, size, Source(SourceKind.SNAPSHOT, snap)) == digest

    return test_crash_during_create_volume, test_crash_during_clone, test_crash_during_snapshot
