"""SIGKILL at every step of every volume and snapshot operation of a ``subvolume`` pool.

As ``test_crash.py`` for the file layout: a child process runs one operation and kills
itself at one step; a fresh Node (recovery) then must leave no intent, exactly the recorded
volumes and snapshots as subvolumes (snapshots read-only), no unrecorded subvolume anywhere
but in ``.statehold/orphans/`` (and none there either: an operation's own leftovers are
rolled back, not orphaned), nothing frozen, and the data written before still readable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from statehold.engine import loop, mounts, subvolume
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec
from tests.integration.engine import crashing
from tests.integration.engine.crashing import Env, cases, cleanup, not_frozen, run_child

pytestmark = pytest.mark.root

POOL = "svcrash"
SMALL = 32 * MiB


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with crashing.pool_env(lambda home: PoolSpec(
            name=POOL, images=(str(home / "disks" / "a.img"), str(home / "disks" / "b.img")),
            image_size=2 * GiB, layout="subvolume")) as e:
        yield e


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
                assert not_frozen(target), f"{target} left frozen"
    for name in snaps:
        assert subvolume.readonly(pool.snapshots_dir / name)
    crashing.assert_no_stray_loops(pool, vols, snaps)


test_crash_during_create_volume, test_crash_during_clone, test_crash_during_snapshot = (
    crashing.layout_cases(assert_consistent, size=SMALL, clone_size=2 * SMALL))


@pytest.mark.parametrize(("i", "step"), cases("delete_volume") + cases("delete_snapshot"))
def test_crash_during_delete(env: Env, i: int, step: str) -> None:
    vol, snap = f"dv{i}{step[7]}", f"ds{i}{step[7]}"
    with cleanup(env, vol, snap):
        pool = env.pool
        pool.create_volume(vol, SMALL, fs=FsType.EXT4)
        pool.create_snapshot(vol, snap)
        op, target = (("delete_volume", vol) if step.startswith("delete_volume")
                      else ("delete_snapshot", snap))
        run_child(env, step, op, {"name": target})
        env.restart()
        pool = env.pool
        assert_consistent(pool)
        names = ({v.name for v in pool.list_volumes()} if op == "delete_volume"
                 else {s.name for s in pool.list_snapshots()})
        assert target not in names  # an intent to delete is finished: gone either way
        if op == "delete_volume":  # the snapshot is a subvolume of its own: it stays
            assert pool.get_snapshot(snap).size == SMALL
