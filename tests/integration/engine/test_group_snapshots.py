"""Group snapshots on real pools: one instant, a bounded freeze, and no filesystem left
frozen whatever dies when.

The module's pool holds three members: ``gx`` (XFS, mounted), ``ge`` (ext4, mounted) and
``gb`` (block, attached). The crash cases run the group snapshot in a child process that
SIGKILLs itself at one step (its freeze keeper lives on and must thaw) or kills its whole
process group (the keeper too: then the next open of the pool thaws, from the intents).
After each kill: every member filesystem takes a write again, the pool is consistent, and
the group is recorded whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import freeze, freezekeeper, groups, rcu
from statehold.engine.node import Node
from statehold.engine.steps import STEPS
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, Source, SourceKind, VolumeMode
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Temporary,
    Unavailable,
)
from tests.fixtures.engine import close_node, engine_home_at
from tests.integration.engine import crashing
from tests.integration.engine.frozen import (
    children_running,
    frozen_targets,
    wait_group_gone,
)
from tests.integration.engine.test_crash import assert_consistent

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("group_child.py")
POOL = "grp"
MOUNTED = {"gx": FsType.XFS, "ge": FsType.EXT4}
BLOCK = "gb"


class Env(crashing.Env):
    """The crash harness's home and Node, plus where the mounted members are mounted."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, POOL)
        self.targets: dict[str, str] = {}

    def members(self, group: str, volumes: tuple[str, ...] = ("gx", "ge", BLOCK)
                ) -> list[tuple[str, str, str]]:
        return [(POOL, v, f"{group}-{v}") for v in volumes]

    def thaw_all(self) -> None:
        for target in self.targets.values():
            freeze.thaw(target)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with engine_home_at() as home:
        e = Env(home)
        try:
            pool = e.node.create_pool(PoolSpec(name=POOL, image_size=8 * GiB))
            for name, fs in MOUNTED.items():
                size = 300 * MiB if fs is FsType.XFS else 64 * MiB
                pool.create_volume(name, size, fs=fs)
                target = home / "mnt" / name
                pool.mount(name, target)
                e.targets[name] = str(target)
                (target / "data").write_bytes(name.encode() * 4096)
            pool.create_volume(BLOCK, 64 * MiB, mode=VolumeMode.BLOCK)
            device = pool.attach(BLOCK)
            with open(device, "r+b") as dev:
                dev.write(b"block-data" * 100)
            yield e
        finally:
            e.thaw_all()
            close_node(e.node)


@contextlib.contextmanager
def _cleanup(env: Env, *names: str) -> Iterator[None]:
    """Thaw our members and drop these groups (and any clones named after them)."""
    try:
        yield
    finally:
        env.thaw_all()
        for name in names:
            with contextlib.suppress(NotFound):
                env.node.delete_snapshot_group(name)
        pool = env.pool
        for vol in pool.list_volumes():
            if any(vol.name.startswith(f"{n}-c") for n in names):
                for target in vol.mounts:
                    pool.unmount(vol.name, Path(target))
                pool.detach(vol.name)
                pool.delete_volume(vol.name)


def _read_clone(env: Env, snapshot: str, clone: str, path: str) -> bytes:
    pool = env.pool
    snap = pool.get_snapshot(snapshot)
    pool.create_volume(clone, snap.size, fs=snap.fs, source=Source(SourceKind.SNAPSHOT, snapshot))
    target = env.home / "mnt" / clone
    pool.mount(clone, target)
    return (target / path).read_bytes()


# -- the plain flow ----------------------------------------------------------------------------

def test_group_snapshot_holds_every_member_and_is_idempotent(env: Env) -> None:
    name = "plain"
    with _cleanup(env, name):
        group = env.node.snapshot_group(name, env.members(name), timeout=30)
        assert group.complete and group.frozen == 2
        assert group.window is not None and group.window > 0
        snaps = {s.name: s for s in env.pool.list_snapshots()}
        for _, vol, snap in env.members(name):
            assert snaps[snap].source_volume == vol
            assert env.pool.snapshot_path(snap).stat().st_mode & 0o777 == 0o444
        assert snaps[f"{name}-gx"].frozen and not snaps[f"{name}-gb"].frozen
        assert env.pool.db.intents() == []
        assert frozen_targets(list(env.targets.values())) == []
        # a retry answers the group taken the first time
        again = env.node.snapshot_group(name, env.members(name))
        assert again.created_at == group.created_at and again.members == group.members
        assert env.node.get_snapshot_group(name).complete
        assert [g.name for g in env.node.list_snapshot_groups()] == [name]
        # every member restores to what was written
        assert _read_clone(env, f"{name}-gx", f"{name}-cx", "data") == b"gx" * 4096
        assert _read_clone(env, f"{name}-ge", f"{name}-ce", "data") == b"ge" * 4096
        clone = env.pool.create_volume(f"{name}-cb", 64 * MiB, mode=VolumeMode.BLOCK,
                                       source=Source(SourceKind.SNAPSHOT, f"{name}-gb"))
        assert clone.path.read_bytes()[:1000] == b"block-data" * 100
        env.node.delete_snapshot_group(name)
        assert not any(s.name.startswith(f"{name}-g") for s in env.pool.list_snapshots())
        with pytest.raises(NotFound):
            env.node.get_snapshot_group(name)
        with pytest.raises(NotFound):
            env.node.delete_snapshot_group(name)


def test_a_group_is_refused_for_bad_or_conflicting_requests(env: Env) -> None:
    name = "bad"
    with _cleanup(env, name, "bad2"):
        with pytest.raises(InvalidArgument):
            env.node.snapshot_group(name, [])
        with pytest.raises(InvalidArgument):
            env.node.snapshot_group(name, [(POOL, "gx", "a"), (POOL, "gx", "b")])
        with pytest.raises(InvalidArgument):
            env.node.snapshot_group(name, env.members(name), timeout=0)
        with pytest.raises(NotFound):
            env.node.snapshot_group(name, [(POOL, "nope", "x")])
        with pytest.raises(NotFound):
            env.node.snapshot_group(name, [("nopool", "gx", "x")])
        env.node.snapshot_group(name, env.members(name, ("gx",)))
        with pytest.raises(AlreadyExists):  # the name, with other members
            env.node.snapshot_group(name, env.members(name, ("gx", "ge")))
        env.pool.create_snapshot("ge", "bad2-ge")
        with pytest.raises(AlreadyExists):  # a member's snapshot name is someone else's
            env.node.snapshot_group("bad2", env.members("bad2", ("gx", "ge")))
        assert "bad2-gx" not in {s.name for s in env.pool.list_snapshots()}
        env.pool.delete_snapshot("bad2-ge")
        assert env.pool.db.intents() == []


def test_a_group_missing_a_member_is_reported_and_taken_whole_again(env: Env) -> None:
    name = "torn"
    with _cleanup(env, name):
        first = env.node.snapshot_group(name, env.members(name))
        env.pool.delete_snapshot(f"{name}-ge")  # a member deleted on its own
        seen = env.node.get_snapshot_group(name)
        assert [m.volume for m in seen.missing] == ["ge"] and not seen.complete
        again = env.node.snapshot_group(name, env.members(name))
        assert again.complete and again.created_at > first.created_at
        assert env.node.get_snapshot_group(name).complete


def test_a_group_across_two_pools_is_one_instant_and_deletes_from_both(env: Env) -> None:
    name = "twopools"
    other = env.node.create_pool(PoolSpec(name="grp2", image_size=2 * GiB))
    try:
        other.create_volume("ox", 300 * MiB, fs=FsType.XFS)
        target = env.home / "mnt" / "ox"
        other.mount("ox", target)
        env.targets["ox"] = str(target)
        with _cleanup(env, name):
            members = [*env.members(name, ("gx",)), ("grp2", "ox", f"{name}-ox")]
            group = env.node.snapshot_group(name, members)
            assert group.frozen == 2 and group.complete
            assert groups.read(other, name) is not None and groups.read(env.pool, name) is not None
            assert env.node.get_snapshot_group(name, pool="grp2").complete
            env.node.delete_snapshot_group(name)
            assert other.list_snapshots() == [] and groups.read(env.pool, name) is None
    finally:
        env.targets.pop("ox", None)
        freeze.thaw(str(target))
        other.unmount("ox", target)
        other.detach("ox")
        env.node.destroy_pool("grp2")


# -- one instant -------------------------------------------------------------------------------

_STAMPER = (
    "import os, sys\n"
    "fds = [os.open(os.path.join(t, 'stamp'), os.O_RDWR | os.O_CREAT, 0o600) for t in sys.argv[1:]]\n"
    "print('ready', flush=True)\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    for fd in fds:\n"
    "        os.pwrite(fd, b'%020d' % n, 0)\n"
)


def test_members_hold_stamps_of_one_instant_under_a_writer(env: Env) -> None:
    """A writer stamps 1, 2, 3, ... into every mounted member in turn, never pausing. The
    freeze of the first member stops it on its next pass there, so the stamps the group
    caught differ by at most one; taken one after the other they would drift apart."""
    names = [f"inst{i}" for i in range(4)]
    targets = [env.targets[v] for v in MOUNTED]
    writer = subprocess.Popen([sys.executable, "-c", _STAMPER, *targets], stdout=subprocess.PIPE)
    try:
        with _cleanup(env, *names):
            assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
            for name in names:
                env.node.snapshot_group(name, env.members(name, tuple(MOUNTED)))
            writer.kill()
            writer.wait()
            for name in names:
                stamps = [int(_read_clone(env, f"{name}-{v}", f"{name}-c{v}", "stamp") or b"0")
                          for v in MOUNTED]
                assert min(stamps) > 0, stamps
                assert max(stamps) - min(stamps) <= 1, (name, stamps)
    finally:
        if writer.poll() is None:
            env.thaw_all()  # a writer stuck on a frozen member could not die
            writer.kill()
            writer.wait()


# -- bounded: the watchdog, the keeper dying, a member already frozen ---------------------------

def test_the_watchdog_thaws_a_freeze_that_outlasts_its_timeout(env: Env) -> None:
    """The hook holds the group at ``group.frozen`` until a write to a member completes,
    which only the watchdog (1 s) can allow: the group then fails and keeps nothing."""
    name = "watchdog"
    held: list[list[str]] = []

    def hook(step: str) -> None:
        if step == "group.frozen":
            held.append(frozen_targets([env.targets["gx"]], deadline=60))

    node = Node(env.home, fault_hook=hook)
    try:
        with _cleanup(env, name), pytest.raises(Temporary):
            node.snapshot_group(name, env.members(name), timeout=1)
        assert held == [[]]  # the write got through while the group still held the freeze
        assert frozen_targets(list(env.targets.values())) == []
        assert not any(s.name.startswith(name) for s in env.pool.list_snapshots())
        assert groups.read(env.pool, name) is None and env.pool.db.intents() == []
    finally:
        node.close()


def test_a_keeper_killed_mid_group_is_replaced_by_a_thaw_here(env: Env) -> None:
    name = "keeperdies"
    killed: list[int] = []
    once = threading.Lock()  # members are cloned on several threads: the first kills

    def hook(step: str) -> None:
        if step != "group.member_cloned":
            return
        with once:
            if not killed:
                # the group's keeper: not the idle spare a previous keeper left started
                (pid,) = [p for p in children_running("statehold.engine.freezekeeper")
                          if p != freezekeeper.spare_pid()]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    node = Node(env.home, fault_hook=hook)
    try:
        with _cleanup(env, name), pytest.raises(Unavailable):
            node.snapshot_group(name, env.members(name))
        assert killed
        assert frozen_targets(list(env.targets.values())) == []
        assert not any(s.name.startswith(name) for s in env.pool.list_snapshots())
        assert env.pool.db.intents() == []
    finally:
        node.close()


def test_a_member_frozen_by_someone_else_fails_the_group_and_thaws_the_rest(env: Env) -> None:
    name = "busy"
    with _cleanup(env, name):
        freeze.freeze(env.targets["ge"])
        try:
            with pytest.raises(FailedPrecondition):
                env.node.snapshot_group(name, env.members(name))
            assert frozen_targets([env.targets["gx"]]) == []
        finally:
            freeze.thaw(env.targets["ge"])
        assert not any(s.name.startswith(name) for s in env.pool.list_snapshots())
        assert env.pool.db.intents() == []


# -- expedited grace periods (engine/rcu.py) ----------------------------------------------------

def test_a_group_expedites_its_freezes_and_puts_the_knob_back(env: Env, tmp_path: Path) -> None:
    """On a stand-in knob (the real one is host-wide and other workers freeze too): the
    keeper wrote it while freezing the members, and left it as it found it."""
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    os.utime(knob, ns=(0, 0))
    policy = rcu.Expedite(knob, tmp_path / "rcu-expedited.json")
    name = "rcu"
    freezekeeper.configure(policy)
    try:
        with _cleanup(env, name):
            group = env.node.snapshot_group(name, env.members(name), timeout=30)
            assert group.frozen == 2
    finally:
        freezekeeper.configure(rcu.Expedite())
    assert knob.stat().st_mtime_ns > 0  # written: turned on for the freeze
    assert knob.read_text().strip() == "0"  # and put back
    assert json.loads(policy.registry.read_text()) == {"holders": []}


def test_a_keeper_on_the_real_knob_leaves_no_holder_behind(env: Env) -> None:
    with freezekeeper.FreezeKeeper(10.0) as keeper:
        keeper.freeze([env.targets["gx"]])
        pid = keeper.pid
        keeper.thaw()
    # as written (dead holders not yet pruned); empty or absent where the knob or /run
    # cannot be written (an unprivileged container): then nobody registered at all
    raw = rcu.REGISTRY.read_text() if rcu.REGISTRY.exists() else ""
    assert pid not in (json.loads(raw)["holders"] if raw.strip() else [])
    assert frozen_targets([env.targets["gx"]]) == []


def test_a_spare_keeper_is_taken_and_freezes_for_the_callers_timeout(env: Env) -> None:
    """After one keeper the next is already started (the snapshot's call does not wait for
    an interpreter); it was started for 10 s, this caller asks 1 s: the caller's holds."""
    with freezekeeper.FreezeKeeper(10.0) as keeper:
        keeper.thaw()
    spare = freezekeeper.spare_pid()
    assert spare is not None and spare in children_running("statehold.engine.freezekeeper")
    with freezekeeper.FreezeKeeper(1.0) as keeper:
        assert keeper.pid == spare
        keeper.freeze([env.targets["gx"]])
        # this write waits for the watchdog: nothing else thaws the member now
        assert frozen_targets([env.targets["gx"]], deadline=60) == []
        window = keeper.thaw()
    assert window.expired and window.seconds < freezekeeper.STARTED_WITH
    assert frozen_targets(list(env.targets.values())) == []
    assert freezekeeper.spare_pid() not in (None, spare)  # the next one is waiting


# -- SIGKILL at every step ---------------------------------------------------------------------

def _cases() -> list[tuple[str, int, str]]:
    counts = {"group.member_precloned": len(MOUNTED), "group.member_frozen": len(MOUNTED),
              "group.member_cloned": 3}
    cases = [(step, k, "self") for step in STEPS["snapshot_group"]
             for k in range(1, counts.get(step, 1) + 1)]
    cases += [(step, 1, "group") for step in ("group.frozen", "group.member_cloned",
                                              "group.cloned")]
    return cases


@pytest.mark.parametrize(("step", "occurrence", "how"), _cases())
def test_sigkill_at_any_step_leaves_every_member_thawed_and_the_group_whole_or_absent(
        env: Env, step: str, occurrence: int, how: str) -> None:
    name = f"k{_cases().index((step, occurrence, how))}"
    targets = list(env.targets.values())
    with _cleanup(env, name):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(env.home), name, step, str(occurrence), how,
             json.dumps(env.members(name))],
            start_new_session=True, stderr=subprocess.PIPE)
        try:
            _, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                env.thaw_all()
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
        if how == "self":
            # the keeper, orphaned, thaws on its own: before any recovery runs
            assert frozen_targets(targets) == []
            assert wait_group_gone(child.pid) == []
            env.restart()
        else:
            assert wait_group_gone(child.pid) == []
            env.restart()  # only recovery can thaw now, from the intents
            assert frozen_targets(targets) == []
        pool = env.pool
        assert_consistent(pool)
        snaps = {s.name for s in pool.list_snapshots()}
        members = {snap for _, _, snap in env.members(name)}
        committed = step == "group.commit"
        assert (groups.read(pool, name) is not None) == committed
        assert (members & snaps) == (members if committed else set())
        # whatever happened, asking again gives a whole group
        assert env.node.snapshot_group(name, env.members(name)).complete
