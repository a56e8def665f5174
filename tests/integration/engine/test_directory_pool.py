"""Pools in an existing directory of a reflink-capable filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import FsType, GiB, MiB, PoolSpec, RaidProfile, Source, SourceKind
from statehold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.fixtures.engine import close_node, release_volumes

pytestmark = pytest.mark.root


@pytest.fixture
def xfs_dir(pool: Pool) -> Path:
    """A directory on an XFS (reflink=1) filesystem: inside the test pool's filesystem."""
    d = pool.mountpoint / "hostdir"
    d.mkdir()
    return d


def test_directory_pool_holds_volumes_snapshots_and_clones(node: Node, xfs_dir: Path,
                                                            scratch: Path) -> None:
    dp = node.create_pool(PoolSpec(name="dirpool", directory=str(xfs_dir)))
    assert dp.is_directory and dp.mountpoint == xfs_dir and dp.fs == "xfs"
    assert node.create_pool(PoolSpec(name="dirpool", directory=str(xfs_dir))) is dp
    dp.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    mnt = scratch / "m"
    dp.mount("v", mnt)
    (mnt / "f").write_text("in a directory pool")
    dp.create_snapshot("v", "s")
    dp.create_volume("c", 64 * MiB, fs=FsType.EXT4, source=Source(SourceKind.SNAPSHOT, "s"))
    dp.mount("c", scratch / "c")
    assert (scratch / "c" / "f").read_text() == "in a directory pool"
    assert dp.capacity().provisioned == 128 * MiB
    release_volumes(dp.mountpoint)
    node.destroy_pool("dirpool")
    assert xfs_dir.is_dir() and list(xfs_dir.iterdir()) == []


def test_directory_pool_reopens_and_imports(engine_home: Path, scratch: Path) -> None:
    node = Node(engine_home)
    other: Node | None = None
    try:
        host = node.create_pool(PoolSpec(name="host", image_size=GiB))
        hostdir = host.mountpoint / "hostdir"
        hostdir.mkdir()
        node.create_pool(PoolSpec(name="dirpool", directory=str(hostdir))).create_volume(
            "keep", 64 * MiB, fs=FsType.EXT4)
        node.close()
        node = Node(engine_home)  # restart: the directory pool reopens from the registry
        assert node.pool("dirpool").get_volume("keep").size == 64 * MiB
        with pytest.raises(AlreadyExists):
            node.import_pool([str(hostdir)])
        node.export_pool("dirpool")
        assert (hostdir / "volumes" / "keep.img").exists()
        other = Node(scratch / "other-home")
        moved = other.import_pool([str(hostdir)], name="moved")
        assert moved.is_directory and [v.name for v in moved.list_volumes()] == ["keep"]
        other.export_pool("moved")
    finally:
        if other is not None:
            other.close()
        close_node(node)


def test_directory_pool_bad_input(node: Node, scratch: Path, xfs_dir: Path) -> None:
    with pytest.raises(NotFound):
        node.create_pool(PoolSpec(name="d", directory=str(scratch / "missing")))
    f = scratch / "file"
    f.write_text("")
    with pytest.raises(InvalidArgument):
        node.create_pool(PoolSpec(name="d", directory=str(f)))
    with pytest.raises(FailedPrecondition, match="reflink"):
        node.create_pool(PoolSpec(name="d", directory=str(scratch)))  # ext4 host: no reflink
    with pytest.raises(InvalidArgument):
        node.create_pool(PoolSpec(name="d", directory=str(xfs_dir), images=("a.img",)))
    with pytest.raises(InvalidArgument):
        node.create_pool(PoolSpec(name="d", directory=str(xfs_dir), profile=RaidProfile.RAID1))
    assert [p.name for p in node.pools()] == ["test"]
    assert list(xfs_dir.iterdir()) == []
    with pytest.raises(InvalidArgument):
        node.import_pool([str(xfs_dir)])
