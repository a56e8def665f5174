"""Fault injection: SIGKILL at every step of every mutating operation, then restart.

For each (operation, step) a child process runs the operation with a fault hook that kills
it at that step; the test process then opens a fresh Node on the same home (which runs
recovery) and checks: no intent left, the database names exactly the files that exist
(with the recorded sizes), snapshot files read-only, no loop device on an unknown or
unlinked file, no filesystem left frozen, and the data written before the operation still
reads back with the same checksum.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from statehold.engine import loop, mounts
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec
from tests.integration.engine import crashing
from tests.integration.engine.crashing import (
    CHILD,
    Env,
    cases,
    checksum,
    cleanup,
    not_frozen,
    run_child,
    write_data,
)

pytestmark = pytest.mark.root

POOL = "crash"
SMALL = 64 * MiB


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with crashing.pool_env(lambda _home: PoolSpec(name=POOL, image_size=16 * GiB)) as e:
        yield e


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
                assert not_frozen(target), f"{target} left frozen"
    for name in snaps:
        assert pool.snapshot_path(name).stat().st_mode & 0o777 == 0o444
    crashing.assert_no_stray_loops(pool, vols, snaps)


test_crash_during_create_volume, test_crash_during_clone, test_crash_during_snapshot = (
    crashing.layout_cases(assert_consistent, size=SMALL, clone_size=SMALL))


@pytest.mark.parametrize(("i", "step"), cases("expand"))
def test_crash_during_expand(env: Env, i: int, step: str) -> None:
    vol = f"ev{i}"
    with cleanup(env, vol):
        pool = env.pool
        pool.create_volume(vol, 300 * MiB)
        mnt = env.home / "mnt" / vol
        pool.mount(vol, mnt)
        digest = write_data(mnt, vol)
        before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
        run_child(env, step, "expand", {"name": vol, "size": 400 * MiB})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert pool.get_volume(vol).size == 400 * MiB  # recorded intent -> rolled forward
        assert checksum(mnt) == digest
        result = pool.expand(vol, 400 * MiB)
        assert result.volume.size == 400 * MiB
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize >= before + 90 * MiB  # the fs grew online


@pytest.mark.parametrize(("i", "step"), cases("delete_volume"))
def test_crash_during_delete_volume(env: Env, i: int, step: str) -> None:
    vol = f"dv{i}"
    with cleanup(env, vol):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / vol
        pool.mount(vol, mnt)
        write_data(mnt, vol)
        pool.unmount(vol, mnt)
        pool.detach(vol)
        run_child(env, step, "delete_volume", {"name": vol})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        # an intent to delete is finished: the volume is gone either way
        assert vol not in {v.name for v in pool.list_volumes()}


@pytest.mark.parametrize(("i", "step"), cases("delete_snapshot"))
def test_crash_during_delete_snapshot(env: Env, i: int, step: str) -> None:
    vol, snap = f"dsv{i}", f"dss{i}"
    with cleanup(env, vol, snap):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        pool.create_snapshot(vol, snap)
        run_child(env, step, "delete_snapshot", {"name": snap})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        assert snap not in {s.name for s in pool.list_snapshots()}
        assert pool.get_volume(vol).size == SMALL


def test_restart_after_crash_keeps_committed_volumes_of_other_names(env: Env) -> None:
    """Recovery of one name never touches another volume's data."""
    keep, victim = "keep", "victim"
    with cleanup(env, keep, victim):
        pool = env.pool
        pool.create_volume(keep, SMALL, fs=FsType.EXT4)
        mnt = env.home / "mnt" / keep
        pool.mount(keep, mnt)
        digest = write_data(mnt, keep)
        run_child(env, "create_volume.file", "create_volume",
                   {"name": victim, "size": SMALL, "fs": "ext4"})
        lines = env.restart()
        assert any(victim in line for line in lines)
        assert_consistent(env.pool)
        assert checksum(mnt) == digest


def test_live_operation_in_another_process_holds_the_pool_lock(env: Env) -> None:
    """A second process never runs recovery over an intent that is still in flight."""
    name = "inflight"
    with cleanup(env, name):
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


@pytest.mark.parametrize(("i", "step"), cases("create_pool"))
def test_crash_during_create_pool_leaks_nothing(env: Env, i: int, step: str) -> None:
    name = f"np{i}"
    image = env.home / "disks" / f"{name}-0.img"
    run_child(env, step, "create_pool", {"name": name, "size": GiB})
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
    run_child(env, "import_pool.probed", "import_pool", {"image": image})
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
