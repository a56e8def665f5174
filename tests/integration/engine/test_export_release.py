"""The export's release protocol in the engine (docs/design/pool-metadata.md, "Export"), on
real file-backed pools: a failure or a SIGKILL at each step of ``export_pool`` leaves the
pool marked (not opened by any Node) until a retry finishes the export or an import of the
same image cancels it; a process that does not let go is named and the mark stays; an
attached volume refuses the export and leaves no mark.

The same with the real node processes (agent, CSI node plugin) holding the pool:
tests/integration/agent/test_export_release.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import loop, mounts
from statehold.engine.hostregistry import EXPORTING
from statehold.engine.node import Node
from statehold.engine.steps import STEPS
from statehold.engine.types import GiB, MiB, PoolSpec, VolumeMode
from statehold.errors import FailedPrecondition, NotFound, Temporary
from tests.fixtures.engine import close_node

pytestmark = pytest.mark.root

CHILD = Path(__file__).with_name("crash_child.py")
POOL = "xp"


class Boom(Exception):
    pass


class Faults:
    def __init__(self) -> None:
        self.step: str | None = None

    def __call__(self, step: str) -> None:
        if step == self.step:
            self.step = None  # once
            raise Boom(step)


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def node(engine_home: Path, faults: Faults) -> Iterator[Node]:
    n = Node(engine_home, fault_hook=faults)
    try:
        yield n
    finally:
        close_node(n)


def make_pool(node: Node) -> tuple[str, str]:
    """A pool with one volume holding known bytes; returns (image, sha256 of the volume)."""
    pool = node.create_pool(PoolSpec(name=POOL, image_size=GiB))
    pool.create_volume("v", 64 * MiB, mode=VolumeMode.BLOCK, fs=None)
    data = hashlib.sha256(b"export").digest() * (MiB // 32)
    with open(pool.volume_path("v"), "r+b") as fh:
        fh.write(data)
        os.fsync(fh.fileno())
    return pool.sources[0], digest(pool.volume_path("v"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def marked(node: Node) -> bool:
    return bool(node.registry.load()["pools"].get(POOL, {}).get(EXPORTING))


def assert_exported(node: Node, image: str) -> None:
    mountpoint = node.pools_dir / POOL
    assert mounts.mount_at(mountpoint) is None and not mountpoint.exists()
    assert loop.find(image) == []
    assert Path(image).stat().st_size == GiB  # an export keeps the image
    assert POOL not in node.registry.load()["pools"]
    with pytest.raises(NotFound):
        node.pool(POOL)


EXPORT_STEPS = STEPS["export_pool"]


@pytest.mark.parametrize("step", EXPORT_STEPS)
@pytest.mark.parametrize("then", ["retry", "import"])
def test_a_failed_export_is_finished_by_a_retry_or_undone_by_an_import(
        node: Node, faults: Faults, step: str, then: str) -> None:
    image, data = make_pool(node)
    faults.step = step
    with pytest.raises(Boom):
        node.export_pool(POOL)
    assert marked(node)
    with pytest.raises(FailedPrecondition, match="being exported"):
        node.pool(POOL)
    other = Node(node.home)  # another process's Node: does not open (nor mount) it
    try:
        assert other.pools() == [] and POOL in other.exporting
        assert (mounts.mount_at(node.pools_dir / POOL) is None) == (step == "export_pool.unmounted")
        if then == "retry":
            other.export_pool(POOL)
            assert_exported(node, image)
            return
        pool = other.import_pool([image])
        assert not marked(node) and [v.name for v in pool.list_volumes()] == ["v"]
        assert digest(pool.volume_path("v")) == data
        assert [v.name for v in node.pool(POOL).list_volumes()] == ["v"]  # the first follows
    finally:
        other.close()


@pytest.mark.parametrize("step", EXPORT_STEPS)
def test_an_exporter_killed_at_each_step_leaves_the_pool_for_a_retry(
        engine_home: Path, step: str) -> None:
    node = Node(engine_home)
    try:
        image, data = make_pool(node)
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(engine_home), POOL, step, "export_pool",
             json.dumps({"name": POOL})], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert marked(node)
        restarted = Node(engine_home)  # a process started after the crash
        try:
            assert restarted.pools() == []
            with pytest.raises(FailedPrecondition, match="being exported"):
                restarted.pool(POOL)
            restarted.export_pool(POOL)
        finally:
            restarted.close()
        assert_exported(node, image)
        back = node.import_pool([image])
        assert digest(back.volume_path("v")) == data
    finally:
        close_node(node)


def test_a_holder_that_does_not_let_go_is_named_and_a_retry_finishes(node: Node) -> None:
    image, _ = make_pool(node)
    mountpoint = node.pools_dir / POOL
    holder = subprocess.Popen(["sleep", "600"], cwd=mountpoint / "volumes")
    try:
        with pytest.raises(Temporary) as caught:
            node.export_pool(POOL, wait=1.0)
        assert f"pid {holder.pid} (sleep): cwd {mountpoint}/volumes" in str(caught.value)
        assert marked(node) and mounts.mount_at(mountpoint) is not None
        with pytest.raises(FailedPrecondition, match="being exported"):
            node.pool(POOL)
    finally:
        holder.kill()
        holder.wait(10)
    node.export_pool(POOL)
    assert_exported(node, image)


def test_an_attached_volume_refuses_the_export_and_leaves_no_mark(node: Node) -> None:
    image, _ = make_pool(node)
    pool = node.pool(POOL)
    device = pool.attach("v")  # a pod's raw block device, say
    other = Node(node.home)
    try:
        with pytest.raises(FailedPrecondition, match="attached"):
            other.export_pool(POOL)
        assert not marked(node)
        assert node.pool(POOL).get_volume("v").device == device  # still served, same handles
        pool.detach("v")
        other.export_pool(POOL)  # ``node`` lets go of it on its own
        with pytest.raises(FailedPrecondition, match="being exported"):
            pool.get_volume("v")
        assert_exported(node, image)
    finally:
        other.close()


def test_an_idle_node_lets_go_within_its_watch_interval(engine_home: Path) -> None:
    """No call reaches the holder: its watcher notices the mark by itself."""
    maker = Node(engine_home)
    idle = Node(engine_home, watch_interval=0.2)
    try:
        image, _ = make_pool(maker)
        maker.close()
        assert [p.name for p in idle.pools()] == [POOL]
        exporter = Node(engine_home, watch_interval=0)
        try:
            exporter.export_pool(POOL, wait=10.0)
        finally:
            exporter.close()
        assert loop.find(image) == []
        with pytest.raises(NotFound):
            idle.pool(POOL)
    finally:
        idle.close()
        close_node(maker)
