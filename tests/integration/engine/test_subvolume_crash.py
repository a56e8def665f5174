"""SIGKILL at every step of every volume and snapshot operation of a ``subvolume`` pool.

As ``test_crash.py`` for the file layout: a child process runs one operation and kills
itself at one step; a fresh Node (recovery) then must leave no intent, exactly the recorded
volumes and snapshots as subvolumes (snapshots read-only), no unrecorded subvolume anywhere
but in ``.statehold/orphans/`` (and none there either: an operation's own leftovers are
rolled back, not orphaned), nothing frozen, and the data written before still readable.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import loop, mounts, subvolume
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.steps import STEPS
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, Source, SourceKind
from tests.fixtures.engine import close_node, engine_home_at

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("crash_child.py")
POOL = "svcrash"
SMALL = 32 * MiB


class Env:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.node = Node(home)

    @property
    def pool(self) -> Pool:
        return self.node.pool(POOL)

    def restart(self) -> list[str]:
        self.node.close()
        self.node = Node(self.home)
        return self.node.recovered.get(POOL, [])


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with engine_home_at() as home:
        e = Env(home)
        try:
            e.node.create_pool(PoolSpec(
                name=POOL, images=(str(home / "disks" / "a.img"), str(home / "disks" / "b.img")),
                image_size=2 * GiB, layout="subvolume"))
            yield e
        finally:
            close_node(e.node)


def _run_child(env: Env, step: str, op: str, args: dict[str, object]) -> None:
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(env.home), POOL, step, op, json.dumps(args)],
        capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == -signal.SIGKILL, (
        f"step {step} was never reached (rc={proc.returncode}): {proc.stderr[-2000:]}")


def _write(mnt: Path, seed: str) -> str:
    data = hashlib.sha256(seed.encode()).digest() * (MiB // 32)
    with open(mnt / "data.bin", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def _checksum(mnt: Path) -> str:
    return hashlib.sha256((mnt / "data.bin").read_bytes()).hexdigest()


def _not_frozen(target: str) -> bool:
    proc = subprocess.run(["fsfreeze", "--freeze", target], capture_output=True, check=False)
    if proc.returncode != 0:
        return False
    subprocess.run(["fsfreeze", "--unfreeze", target], capture_output=True, check=True)
    return True


def _wait_thawed(target: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not _not_frozen(target):
        assert time.monotonic() < deadline, f"{target} still frozen {seconds:g} s after the crash"
        time.sleep(0.05)


def _subvolumes(pool: Pool) -> set[str]:
    """Every subvolume of the pool filesystem, by path relative to its top."""
    out = subprocess.run(["btrfs", "subvolume", "list", str(pool.mountpoint)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {line.split(" path ", 1)[1].strip() for line in out.splitlines() if " path " in line}


def assert_consistent(pool: Pool) -> None:
    assert pool.db.intents() == []
    vols = {v.name: v for v in pool.db.volumes()}
    snaps = {s.name for s in pool.db.snapshots()}
    assert set(os.listdir(pool.volumes_dir)) == set(vols)
    assert set(os.listdir(pool.snapshots_dir)) == snaps
    expected = {f"volumes/{n}" for n in vols} | {f"snapshots/{n}" for n in snaps}
    assert _subvolumes(pool) == expected, "an unrecorded subvolume outside the orphans"
    for name, rec in vols.items():
        assert subvolume.is_subvolume(pool.volumes_dir / name)
        assert not subvolume.readonly(pool.volumes_dir / name)
        assert sorted(os.listdir(pool.volumes_dir / name)) == ["volume.img"]
        assert pool.volume_path(name).stat().st_size == rec.size
        for dev in loop.find(pool.volume_path(name)):
            for target in mounts.targets_of(dev):
                assert _not_frozen(target), f"{target} left frozen"
    for name in snaps:
        assert subvolume.readonly(pool.snapshots_dir / name)
    known = {str(pool.volume_path(n)) for n in vols} | {str(pool.snapshot_path(n)) for n in snaps}
    stray = {dev: b for dev, b in loop.under(pool.mountpoint).items() if b not in known}
    assert stray == {}, f"leaked loop devices: {stray}"


@contextlib.contextmanager
def _cleanup(env: Env, *names: str) -> Iterator[None]:
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


def _cases(op: str) -> list[tuple[int, str]]:
    return list(enumerate(STEPS[op]))


@pytest.mark.parametrize(("i", "step"), _cases("create_volume"))
def test_crash_during_create_volume(env: Env, i: int, step: str) -> None:
    name = f"cv{i}"
    with _cleanup(env, name):
        _run_child(env, step, "create_volume", {"name": name, "size": SMALL, "fs": "ext4"})
        env.restart()
        assert_consistent(env.pool)
        assert (name in {v.name for v in env.pool.list_volumes()}) == (step == "create_volume.commit")
        assert env.pool.create_volume(name, SMALL, fs=FsType.EXT4).size == SMALL


@pytest.mark.parametrize("kind", [SourceKind.SNAPSHOT, SourceKind.VOLUME])
@pytest.mark.parametrize(("i", "step"), _cases("clone"))
def test_crash_during_clone(env: Env, i: int, step: str, kind: SourceKind) -> None:
    src, snap, name = f"cls{i}{kind[0]}", f"clsnap{i}{kind[0]}", f"cl{i}{kind[0]}"
    with _cleanup(env, src, snap, name):
        pool = env.pool
        pool.create_volume(src, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / src
        pool.mount(src, mnt)
        digest = _write(mnt, src)
        pool.create_snapshot(src, snap)
        origin = snap if kind is SourceKind.SNAPSHOT else src
        if kind is SourceKind.SNAPSHOT:
            _write(mnt, "changed-after-snapshot")
        _run_child(env, step, "clone", {"name": name, "size": 2 * SMALL, "fs": "ext4",
                                        "kind": kind.value, "source": origin})
        _wait_thawed(str(mnt))
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert (name in {v.name for v in pool.list_volumes()}) == (step == "clone.commit")
        pool.create_volume(name, 2 * SMALL, fs=FsType.EXT4, source=Source(kind, origin))
        cmnt = env.home / "mnt" / name
        pool.mount(name, cmnt)
        assert _checksum(cmnt) == digest


@pytest.mark.parametrize(("i", "step"), _cases("create_snapshot"))
def test_crash_during_snapshot(env: Env, i: int, step: str) -> None:
    vol, snap, clone = f"sv{i}", f"ss{i}", f"sc{i}"
    with _cleanup(env, vol, snap, clone):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / vol
        pool.mount(vol, mnt)
        digest = _write(mnt, vol)
        _run_child(env, step, "create_snapshot", {"volume": vol, "name": snap})
        _wait_thawed(str(mnt))
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert _checksum(mnt) == digest
        assert (snap in {s.name for s in pool.list_snapshots()}) == (step == "snapshot.commit")
        pool.create_snapshot(vol, snap)
        pool.create_volume(clone, SMALL, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, snap))
        cmnt = env.home / "mnt" / clone
        pool.mount(clone, cmnt)
        assert _checksum(cmnt) == digest


@pytest.mark.parametrize(("i", "step"), _cases("delete_volume") + _cases("delete_snapshot"))
def test_crash_during_delete(env: Env, i: int, step: str) -> None:
    vol, snap = f"dv{i}{step[7]}", f"ds{i}{step[7]}"
    with _cleanup(env, vol, snap):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        pool.create_snapshot(vol, snap)
        op, target = (("delete_volume", vol) if step.startswith("delete_volume")
                      else ("delete_snapshot", snap))
        _run_child(env, step, op, {"name": target})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        names = ({v.name for v in pool.list_volumes()} if op == "delete_volume"
                 else {s.name for s in pool.list_snapshots()})
        assert target not in names  # an intent to delete is finished: gone either way
        if op == "delete_volume":  # the snapshot is a subvolume of its own: it stays
            assert pool.get_snapshot(snap).size == SMALL
