"""Fault injection: SIGKILL at every step of every mutating operation, then restart.

For each (operation, step) a child process runs the operation with a fault hook that kills
it at that step; the test process then opens a fresh Node on the same home (which runs
recovery) and checks: no intent left, the database names exactly the files that exist
(with the recorded sizes), snapshot files read-only, no loop device on an unknown or
unlinked file, no filesystem left frozen, and the data written before the operation still
reads back with the same checksum.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from statehold.engine import loop, mounts
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.steps import STEPS
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, Source, SourceKind
from tests.fixtures.engine import close_node, engine_home_at

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("crash_child.py")
POOL = "crash"
SMALL = 64 * MiB


class Env:
    """The module's home and its current Node (replaced at every simulated restart)."""

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
            e.node.create_pool(PoolSpec(name=POOL, image_size=16 * GiB))
            yield e
        finally:
            close_node(e.node)


def _run_child(env: Env, step: str, op: str, args: dict[str, object]) -> None:
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(env.home), POOL, step, op, json.dumps(args)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"step {step} was never reached (rc={proc.returncode}): {proc.stderr[-2000:]}")


def _write_data(mnt: Path, seed: str) -> str:
    data = hashlib.sha256(seed.encode()).digest() * (MiB // 32)
    with open(mnt / "data.bin", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def _checksum(mnt: Path) -> str:
    return hashlib.sha256((mnt / "data.bin").read_bytes()).hexdigest()


def _not_frozen(target: str) -> bool:
    """Probe without blocking: freezing a frozen fs fails with EBUSY; else thaw again."""
    proc = subprocess.run(["fsfreeze", "--freeze", target], capture_output=True, check=False)
    if proc.returncode != 0:
        return False
    subprocess.run(["fsfreeze", "--unfreeze", target], capture_output=True, check=True)
    return True


def _wait_thawed(target: str, seconds: float = 30.0) -> None:
    """The keeper notices its parent's death (end of file on its pipe) and thaws: poll."""
    deadline = time.monotonic() + seconds
    while not _not_frozen(target):
        assert time.monotonic() < deadline, f"{target} still frozen {seconds:g} s after the crash"
        time.sleep(0.05)


def assert_consistent(pool: Pool) -> None:
    assert pool.db.intents() == []
    vols = {v.name: v for v in pool.db.volumes()}
    snaps = {s.name: s for s in pool.db.snapshots()}
    vol_files = {p.name.removesuffix(".img") for p in pool.volumes_dir.iterdir()}
    snap_files = {p.name.removesuffix(".img") for p in pool.snapshots_dir.iterdir()}
    assert vol_files == set(vols)
    assert snap_files == set(snaps)
    for name, rec in vols.items():
        assert pool.volume_path(name).stat().st_size == rec.size
        for dev in loop.find(pool.volume_path(name)):
            assert loop.size_of(dev) == rec.size
            for target in mounts.targets_of(dev):
                assert _not_frozen(target), f"{target} left frozen"
    for name in snaps:
        assert pool.snapshot_path(name).stat().st_mode & 0o777 == 0o444
    known = {str(pool.volume_path(n)) for n in vols} | {str(pool.snapshot_path(n)) for n in snaps}
    stray = {dev: b for dev, b in loop.under(pool.mountpoint).items() if b not in known}
    assert stray == {}, f"leaked loop devices: {stray}"


@contextlib.contextmanager
def _cleanup(env: Env, *names: str) -> Iterator[None]:
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


def _cases(op: str) -> list[tuple[int, str]]:
    return list(enumerate(STEPS[op]))


@pytest.mark.parametrize(("i", "step"), _cases("create_volume"))
def test_crash_during_create_volume(env: Env, i: int, step: str) -> None:
    name = f"cv{i}"
    with _cleanup(env, name):
        _run_child(env, step, "create_volume", {"name": name, "size": SMALL, "fs": "ext4"})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        names = {v.name for v in pool.list_volumes()}
        assert (name in names) == (step == "create_volume.commit")
        # whatever happened, the same request now succeeds and is idempotent
        again = pool.create_volume(name, SMALL, fs=FsType.EXT4)
        assert again.size == SMALL


@pytest.mark.parametrize("kind", [SourceKind.SNAPSHOT, SourceKind.VOLUME])
@pytest.mark.parametrize(("i", "step"), _cases("clone"))
def test_crash_during_clone(env: Env, i: int, step: str, kind: SourceKind) -> None:
    """From a snapshot, or from a mounted volume (frozen around the reflink)."""
    src, snap, name = f"cls{i}{kind[0]}", f"clsnap{i}{kind[0]}", f"cl{i}{kind[0]}"
    with _cleanup(env, src, snap, name):
        pool = env.pool
        pool.create_volume(src, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / src
        pool.mount(src, mnt)
        digest = _write_data(mnt, src)
        pool.create_snapshot(src, snap)
        origin = snap if kind is SourceKind.SNAPSHOT else src
        if kind is SourceKind.SNAPSHOT:
            _write_data(mnt, "changed-after-snapshot")
        _run_child(env, step, "clone",
                   {"name": name, "size": SMALL, "fs": "ext4", "kind": kind.value,
                    "source": origin})
        _wait_thawed(str(mnt))  # by the freeze keeper, before any recovery runs
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert _not_frozen(str(mnt))
        assert _checksum(mnt) == digest or kind is SourceKind.SNAPSHOT
        names = {v.name for v in pool.list_volumes()}
        assert (name in names) == (step == "clone.commit")
        pool.create_volume(name, SMALL, fs=FsType.EXT4, source=Source(kind, origin))
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
        digest = _write_data(mnt, vol)
        _run_child(env, step, "create_snapshot", {"volume": vol, "name": snap})
        # the freeze keeper thaws as soon as the engine dies, before any recovery runs
        _wait_thawed(str(mnt))
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert _not_frozen(str(mnt))
        assert _checksum(mnt) == digest
        names = {s.name for s in pool.list_snapshots()}
        assert (snap in names) == (step == "snapshot.commit")
        pool.create_snapshot(vol, snap)
        pool.create_volume(clone, SMALL, fs=FsType.EXT4,
                           source=Source(SourceKind.SNAPSHOT, snap))
        cmnt = env.home / "mnt" / clone
        pool.mount(clone, cmnt)
        assert _checksum(cmnt) == digest


@pytest.mark.parametrize(("i", "step"), _cases("expand"))
def test_crash_during_expand(env: Env, i: int, step: str) -> None:
    vol = f"ev{i}"
    with _cleanup(env, vol):
        pool = env.pool
        pool.create_volume(vol, 300 * MiB)
        mnt = env.home / "mnt" / vol
        pool.mount(vol, mnt)
        digest = _write_data(mnt, vol)
        before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
        _run_child(env, step, "expand", {"name": vol, "size": 400 * MiB})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert pool.get_volume(vol).size == 400 * MiB  # recorded intent -> rolled forward
        assert _checksum(mnt) == digest
        result = pool.expand(vol, 400 * MiB)
        assert result.volume.size == 400 * MiB
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize >= before + 90 * MiB  # the fs grew online


@pytest.mark.parametrize(("i", "step"), _cases("delete_volume"))
def test_crash_during_delete_volume(env: Env, i: int, step: str) -> None:
    vol = f"dv{i}"
    with _cleanup(env, vol):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / vol
        pool.mount(vol, mnt)
        _write_data(mnt, vol)
        pool.unmount(vol, mnt)
        pool.detach(vol)
        _run_child(env, step, "delete_volume", {"name": vol})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        # an intent to delete is finished: the volume is gone either way
        assert vol not in {v.name for v in pool.list_volumes()}


@pytest.mark.parametrize(("i", "step"), _cases("delete_snapshot"))
def test_crash_during_delete_snapshot(env: Env, i: int, step: str) -> None:
    vol, snap = f"dsv{i}", f"dss{i}"
    with _cleanup(env, vol, snap):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        pool.create_snapshot(vol, snap)
        _run_child(env, step, "delete_snapshot", {"name": snap})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert snap not in {s.name for s in pool.list_snapshots()}
        assert pool.get_volume(vol).size == SMALL


def test_restart_after_crash_keeps_committed_volumes_of_other_names(env: Env) -> None:
    """Recovery of one name never touches another volume's data."""
    keep, victim = "keep", "victim"
    with _cleanup(env, keep, victim):
        pool = env.pool
        pool.create_volume(keep, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / keep
        pool.mount(keep, mnt)
        digest = _write_data(mnt, keep)
        _run_child(env, "create_volume.file", "create_volume",
                   {"name": victim, "size": SMALL, "fs": "ext4"})
        lines = env.restart()
        assert any(victim in line for line in lines)
        assert_consistent(env.pool)
        assert _checksum(mnt) == digest


def test_live_operation_in_another_process_holds_the_pool_lock(env: Env) -> None:
    """A second process never runs recovery over an intent that is still in flight."""
    name = "inflight"
    with _cleanup(env, name):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(env.home), POOL, "pause:create_volume.file",
             "create_volume", json.dumps({"name": name, "size": SMALL, "fs": "ext4"})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "paused"
            lock = env.pool.meta_dir / "lock"
            fd = os.open(lock, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            assert [i.target for i in env.pool.db.intents()] == [name]
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert env.restart() == []
        assert env.pool.get_volume(name).size == SMALL
        assert_consistent(env.pool)


@pytest.mark.parametrize(("i", "step"), _cases("create_pool"))
def test_crash_during_create_pool_leaks_nothing(env: Env, i: int, step: str) -> None:
    name = f"np{i}"
    image = env.home / "disks" / f"{name}-0.img"
    _run_child(env, step, "create_pool", {"name": name, "size": GiB})
    env.restart()
    committed = step == "create_pool.commit"
    try:
        assert (name in {p.name for p in env.node.pools()}) == committed
        assert "creating" not in json.loads((env.home / "node.json").read_text()) or \
            json.loads((env.home / "node.json").read_text())["creating"] == {}
        if committed:
            assert env.node.pool(name).create_volume("v", SMALL, fs=FsType.EXT4).size == SMALL
        else:
            assert loop.find(image) == []
            assert not image.exists()
            assert mounts.mount_at(env.home / "pools" / name) is None
            assert not (env.home / "pools" / name).exists()
    finally:
        if committed:
            env.node.destroy_pool(name)
    assert env.pool.db.intents() == []  # the module's pool is untouched


def test_crash_during_import_leaves_no_probe_mount(env: Env) -> None:
    pool = env.node.create_pool(PoolSpec(name="exported", image_size=GiB))
    image = pool.sources[0]
    env.node.export_pool("exported")
    _run_child(env, "import_pool.probed", "import_pool", {"image": image})
    lines = env.restart()
    assert lines == [] or all("exported" not in line for line in lines)
    assert list((env.home / "pools").glob(".import-*")) == []
    assert loop.find(image) == []
    imported = env.node.import_pool([image])
    assert imported.name == "exported"
    env.node.destroy_pool("exported")


def test_pool_creation_in_flight_holds_the_home_lock(env: Env) -> None:
    """Another process's Node start never rolls back a pool creation still running."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(env.home), POOL, "pause:create_pool.mounted",
         "create_pool", json.dumps({"name": "inflight-pool", "size": GiB})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "paused"
        fd = os.open(env.home / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    env.restart()
    assert env.node.pool("inflight-pool").capacity().total > 0
    env.node.destroy_pool("inflight-pool")
