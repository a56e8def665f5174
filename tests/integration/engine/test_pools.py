"""Pools: creation rules, device checks, btrfs profiles, capacity, restart and import."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import loop, mounts
from statehold.engine.node import Node
from statehold.engine.pool import Pool
from statehold.engine.types import (
    FsType,
    GiB,
    MiB,
    PoolSpec,
    RaidProfile,
    Source,
    SourceKind,
    VolumeMode,
)
from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from tests.fixtures.engine import close_node, release_home

pytestmark = pytest.mark.root


@pytest.fixture
def raw_device(scratch: Path) -> Iterator[str]:
    """A plain loop device standing in for a real disk (detached by exact path after)."""
    backing = scratch / "disk.raw"
    subprocess.run(["truncate", "-s", "1G", str(backing)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        for source, target in reversed([(m.source, m.target) for m in mounts.mounts()]):
            if source == dev:
                subprocess.run(["umount", target], check=False, capture_output=True)
        for d in loop.find(backing):
            subprocess.run(["losetup", "-d", d], check=False)


def test_create_pool_is_idempotent_and_other_spec_is_already_exists(node: Node) -> None:
    spec = PoolSpec(name="p", image_size=1 * GiB)
    first = node.create_pool(spec)
    assert node.create_pool(spec) is first
    assert first.fs == "xfs" and first.mountpoint == node.home / "pools" / "p"
    assert first.sources == (str(node.home / "disks" / "p-0.img"),)
    with pytest.raises(AlreadyExists):
        node.create_pool(PoolSpec(name="p", image_size=2 * GiB))
    # the overprovision ratio is a tunable: same pool, ratio updated
    assert node.create_pool(PoolSpec(name="p", image_size=GiB, overprovision_ratio=2.0)) is first
    assert first.capacity().overprovision_ratio == 2.0
    assert node.create_pool(PoolSpec(name="p", image_size=GiB, force=True)) is first
    assert [p.name for p in node.pools()] == ["p"]
    assert node.pool("p") is first
    with pytest.raises(NotFound):
        node.pool("q")


@pytest.mark.parametrize(
    "spec",
    [
        PoolSpec(name="Bad", image_size=GiB),
        PoolSpec(name="p", image_size=GiB, overprovision_ratio=0.5),
        PoolSpec(name="p", image_size=GiB, profile=RaidProfile.RAID1),
        PoolSpec(name="p", image_size=100 * MiB),
        PoolSpec(name="p"),
        PoolSpec(name="p", devices=("/dev/null",), images=("a.img",), image_size=GiB),
        PoolSpec(name="p", images=("a.img", "a.img"), image_size=GiB),
        PoolSpec(name="p", image_size=GiB, profile="raid5"),  # type: ignore[arg-type]
    ],
)
def test_bad_pool_specs_are_invalid_argument_and_change_nothing(node: Node, spec: PoolSpec) -> None:
    with pytest.raises(InvalidArgument):
        node.create_pool(spec)
    assert node.pools() == []
    assert not (node.home / "disks").exists() or list((node.home / "disks").iterdir()) == []


def test_missing_device_is_not_found(node: Node) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        node.create_pool(PoolSpec(name="p", devices=("/dev/statehold-no-such-disk",)))


def test_regular_file_as_device_is_invalid_argument(node: Node, scratch: Path) -> None:
    f = scratch / "file"
    f.write_bytes(b"")
    with pytest.raises(InvalidArgument):
        node.create_pool(PoolSpec(name="p", devices=(str(f),)))


def test_device_holding_a_filesystem_is_refused_unless_forced(node: Node, raw_device: str) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", raw_device], check=True)
    with pytest.raises(FailedPrecondition, match="ext4"):
        node.create_pool(PoolSpec(name="p", devices=(raw_device,)))
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", raw_device],
                         capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ext4"  # untouched
    pool = node.create_pool(PoolSpec(name="p", devices=(raw_device,), force=True))
    assert pool.fs == "xfs" and pool.devices == (raw_device,)
    pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    node.destroy_pool("p")
    assert mounts.targets_of(raw_device) == []


def _write_mbr(device: str) -> None:
    """An MS-DOS partition table with one Linux partition (no fdisk on this host)."""
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (
        4096).to_bytes(4, "little")
    sector = bytearray(512)
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    with open(device, "r+b") as fh:
        fh.write(bytes(sector))


def test_device_with_partition_table_is_refused(node: Node, raw_device: str) -> None:
    _write_mbr(raw_device)
    with pytest.raises(FailedPrecondition, match="dos"):
        node.create_pool(PoolSpec(name="p", devices=(raw_device,)))


def test_device_in_use_is_refused_even_when_forced(node: Node, raw_device: str,
                                                    scratch: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", raw_device], check=True)
    mnt = scratch / "busy"
    mnt.mkdir()
    subprocess.run(["mount", raw_device, str(mnt)], check=True)
    with pytest.raises(FailedPrecondition, match="in use"):
        node.create_pool(PoolSpec(name="p", devices=(raw_device,), force=True))
    assert mounts.mount_at(mnt) is not None


def test_image_holding_a_filesystem_is_refused_unless_forced(node: Node, scratch: Path) -> None:
    img = scratch / "old.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    spec = PoolSpec(name="p", images=(str(img),), image_size=GiB)
    with pytest.raises(FailedPrecondition):
        node.create_pool(spec)
    assert img.exists()
    pool = node.create_pool(PoolSpec(name="p", images=(str(img),), image_size=GiB, force=True))
    assert pool.fs == "xfs"


@pytest.mark.parametrize("profile", list(RaidProfile))
def test_several_images_make_a_btrfs_pool(node: Node, profile: RaidProfile, scratch: Path) -> None:
    pool = node.create_pool(PoolSpec(name="multi", images=("m-0.img", "m-1.img"),
                                     image_size=GiB, profile=profile))
    assert pool.fs == "btrfs" and pool.profile == profile.value
    assert len(pool.devices) == 2
    usage = subprocess.run(["btrfs", "filesystem", "df", str(pool.mountpoint)],
                           capture_output=True, text=True, check=True).stdout
    data_line = next(line for line in usage.splitlines() if line.startswith("Data"))
    assert profile.value.upper() in data_line.upper() or (
        profile is RaidProfile.SINGLE and "single" in data_line)
    pool.create_volume("v", 300 * MiB)
    mnt = scratch / "m"
    pool.mount("v", mnt)
    (mnt / "f").write_text("on btrfs")
    pool.create_snapshot("v", "s")
    pool.create_volume("c", 300 * MiB, source=Source(SourceKind.SNAPSHOT, "s"))
    pool.mount("c", scratch / "c")
    assert (scratch / "c" / "f").read_text() == "on btrfs"


def test_capacity_reports_thin_provisioning(pool: Pool, scratch: Path) -> None:
    empty = pool.capacity()
    assert 1.8 * GiB < empty.total <= 2 * GiB
    assert empty.provisioned == 0 and empty.free <= empty.total
    assert empty.allocatable == int(empty.total * empty.overprovision_ratio)
    pool.create_volume("a", 1 * GiB, fs=FsType.EXT4)
    pool.create_volume("b", 3 * GiB, fs=FsType.EXT4)  # more than the pool: thin
    cap = pool.capacity()
    assert cap.provisioned == 4 * GiB
    assert cap.allocatable == empty.allocatable - 4 * GiB
    mnt = scratch / "m"
    pool.mount("a", mnt)
    with open(mnt / "blob", "wb") as fh:
        fh.write(b"\x01" * (64 * MiB))
    pool.unmount("a", mnt)
    assert pool.capacity().used >= cap.used + 60 * MiB


def test_destroy_pool_with_attached_volume_is_failed_precondition(node: Node, pool: Pool) -> None:
    pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
    pool.attach("v")
    with pytest.raises(FailedPrecondition):
        node.destroy_pool("test")
    assert node.pool("test") is pool
    pool.detach("v")
    image = Path(pool.sources[0])
    node.destroy_pool("test")
    assert not image.exists()
    assert node.pools() == []
    assert mounts.mount_at(pool.mountpoint) is None


def _fill(pool: Pool, scratch: Path) -> None:
    pool.create_volume("keep", 64 * MiB, fs=FsType.EXT4, labels={"app": "db"})
    mnt = scratch / "fill"
    pool.mount("keep", mnt)
    (mnt / "f").write_text("survives")
    pool.create_snapshot("keep", "snap")
    pool.unmount("keep", mnt)
    pool.detach("keep")


def test_pool_reopens_after_restart(engine_home: Path, scratch: Path) -> None:
    node = Node(engine_home)
    try:
        _fill(node.create_pool(PoolSpec(name="p", image_size=GiB)), scratch)
        node.close()
        release_home(engine_home)  # reboot: nothing mounted, nothing attached
        assert loop.under(engine_home) == {}
        node = Node(engine_home)
        pool = node.pool("p")
        assert node.recovered["p"] == []
        vol = pool.get_volume("keep")
        assert vol.labels == {"app": "db"} and vol.formatted
        assert [s.name for s in pool.list_snapshots()] == ["snap"]
        mnt = scratch / "again"
        pool.mount("keep", mnt)
        assert (mnt / "f").read_text() == "survives"
    finally:
        close_node(node)


def test_pool_imports_on_another_home(engine_home: Path, scratch: Path) -> None:
    node = Node(engine_home)
    other_home = scratch / "other"
    other: Node | None = None
    try:
        pool = node.create_pool(PoolSpec(name="p", image_size=GiB))
        _fill(pool, scratch)
        image = pool.sources[0]
        node.export_pool("p")
        assert node.pools() == [] and loop.find(image) == []
        other = Node(other_home)
        with pytest.raises(InvalidArgument):
            other.import_pool([])
        moved = other.import_pool([image], name="moved")
        assert moved.name == "moved" and moved.mountpoint == other_home / "pools" / "moved"
        assert [v.name for v in moved.list_volumes()] == ["keep"]
        mnt = scratch / "moved-mnt"
        moved.mount("keep", mnt)
        assert (mnt / "f").read_text() == "survives"
        with pytest.raises(AlreadyExists):
            other.import_pool([image], name="moved")
        other.close()
        other = Node(other_home)  # the import is registered: it reopens
        assert [p.name for p in other.pools()] == ["moved"]
    finally:
        if other is not None:
            close_node(other)
        release_home(other_home)
        close_node(node)


def test_import_of_a_blank_image_is_invalid_argument(node: Node, scratch: Path) -> None:
    img = scratch / "blank.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    with pytest.raises(InvalidArgument):
        node.import_pool([str(img)])
    assert loop.find(img) == []
    assert node.pools() == []


def test_missing_image_makes_only_that_pool_unavailable(engine_home: Path) -> None:
    node = Node(engine_home)
    try:
        node.create_pool(PoolSpec(name="gone", image_size=GiB))
        node.create_pool(PoolSpec(name="kept", image_size=GiB))
        image = Path(node.pool("gone").sources[0])
        node.close()
        release_home(engine_home)
        image.unlink()
        node = Node(engine_home)
        assert [p.name for p in node.pools()] == ["kept"]
        assert "gone" in node.errors
        with pytest.raises(Unavailable):
            node.pool("gone")
        node.destroy_pool("gone")  # forgetting a pool whose disks are gone works
        assert "gone" not in node.errors
        with pytest.raises(NotFound):
            node.pool("gone")
    finally:
        close_node(node)


def test_image_of_another_pool_is_refused_and_that_pool_keeps_running(node: Node,
                                                                      pool: Pool) -> None:
    image = pool.sources[0]
    with pytest.raises(FailedPrecondition, match="in use"):
        node.create_pool(PoolSpec(name="thief", images=(image,), image_size=GiB, force=True))
    assert loop.find(image) == list(pool.devices)
    assert mounts.mount_at(pool.mountpoint) is not None
    assert pool.create_volume("still", 64 * MiB, fs=FsType.EXT4).size == 64 * MiB


def test_import_of_an_attached_file_is_refused_and_leaves_it_attached(node: Node,
                                                                       pool: Pool) -> None:
    pool.create_volume("blk", 300 * MiB, mode=VolumeMode.BLOCK)
    dev = pool.attach("blk")  # say a pod is using it as a raw block device
    with pytest.raises(FailedPrecondition, match="attached"):
        node.import_pool([str(pool.volume_path("blk"))])
    assert pool.get_volume("blk").device == dev


def test_a_second_node_on_the_same_home_follows_registry_changes(engine_home: Path) -> None:
    agent = Node(engine_home)
    cli = Node(engine_home)
    try:
        made = cli.create_pool(PoolSpec(name="p", image_size=GiB))
        made.create_volume("v", 64 * MiB, fs=FsType.EXT4)
        held = agent.pool("p")
        assert [v.name for v in held.list_volumes()] == ["v"]
        hostdir = made.mountpoint / "dir"
        hostdir.mkdir()
        cli.create_pool(PoolSpec(name="d", directory=str(hostdir)))
        assert [p.name for p in agent.pools()] == ["d", "p"]
        cli.export_pool("d")
        assert [p.name for p in agent.pools()] == ["p"]
        image = made.sources[0]
        cli.export_pool("p")  # the agent had it open: it lets go (the release protocol)
        with pytest.raises(FailedPrecondition, match="being exported"):
            held.list_volumes()  # what it held answers, without touching the pool
        with pytest.raises(NotFound):
            agent.pool("p")
        assert loop.find(image) == [] and agent.pools() == []
        assert [v.name for v in agent.import_pool([image]).list_volumes()] == ["v"]
        assert cli.pool("p").get_volume("v").size == 64 * MiB  # and the other follows
    finally:
        cli.close()
        close_node(agent)
    assert agent.pools() == []  # a closed Node stays closed


def test_btrfs_pool_imports_with_all_its_images(engine_home: Path, scratch: Path) -> None:
    node = Node(engine_home)
    other = Node(scratch / "other")
    try:
        pool = node.create_pool(PoolSpec(name="mirror", images=("a.img", "b.img"), image_size=GiB,
                                         profile=RaidProfile.RAID1))
        pool.create_volume("v", 64 * MiB, fs=FsType.EXT4)
        images = list(pool.sources)
        node.export_pool("mirror")
        with pytest.raises(FailedPrecondition):
            other.import_pool(images[:1])  # half a mirror: not mounted (no degraded mounts)
        assert all(loop.find(i) == [] for i in images)
        moved = other.import_pool(images)
        assert moved.fs == "btrfs" and [v.name for v in moved.list_volumes()] == ["v"]
    finally:
        close_node(other)
        close_node(node)
