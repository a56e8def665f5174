"""A hostile or confused caller on the real CSI socket (issue 18): the node service touches
only the volume's own mounts and the files it created, whatever paths it is handed.

The allowed root deliberately contains the driver's home (so defect 6 is reachable) and sits
beside ``outside/``, a directory outside every root. Every test snapshots, before the
hostile call and after it, the mounts under the test's directory and every file outside the
driver's home (type, mode, inode, sha256 or link target), and asserts that nothing outside
the volume's own files and mounts changed. The same cases run for local and for shared-mode
volumes. Mounts and files a test makes are its own, under its scratch directory, released by
exact path afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from statehold.csi.backend_local import LocalBackend
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.gen import csi_pb2_grpc as rpc
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine import mounts
from statehold.engine.node import Node
from statehold.engine.types import GiB, PoolSpec
from tests.fixtures.engine import close_node, release_home
from tests.integration.csi.harness import MiB, block_cap, code_of, mount_cap

pytestmark = [pytest.mark.root]

C = grpc.StatusCode
Mode = pb.VolumeCapability.AccessMode
RWX = Mode.MULTI_NODE_MULTI_WRITER
RACE_ROUNDS = 200


@dataclass
class World:
    scratch: Path
    root: Path          # the allowed root
    home: Path          # the driver's home, inside the root
    outside: Path       # outside every root: where an escape would land
    node: rpc.NodeStub
    controller: rpc.ControllerStub
    engine: Node
    made: list[Path] = field(default_factory=list)  # mounts this test made, by exact path

    def dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture
def world(scratch: Path) -> Iterator[World]:
    root, outside = scratch / "allowed", scratch / "outside"
    home = root / "statehold"
    root.mkdir()
    outside.mkdir()
    engine = Node(home)
    server: CsiServer | None = None
    channel: grpc.Channel | None = None
    w: World | None = None
    try:
        engine.create_pool(PoolSpec(name="test", image_size=2 * GiB))
        sock = scratch / "csi.sock"
        cfg = ServerConfig(endpoint=f"unix://{sock}", node_id="node-a", mode="all", home=home,
                           allowed_roots=(root,), grace=1.0)
        server = CsiServer(cfg, local=LocalBackend(cfg.backend_config(), node=engine), with_shared=True)
        server.start()
        assert server.router.shared is not None
        channel = grpc.insecure_channel(f"unix://{sock}")
        w = World(scratch, root, home, outside, rpc.NodeStub(channel), rpc.ControllerStub(channel), engine)
        yield w
    finally:
        if w is not None:
            for path in reversed(w.made):  # ours, by exact path, top-most first
                while mounts.mount_at(path) is not None:
                    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                        break
        if channel is not None:
            channel.close()
        if server is not None:
            server.stop(0)
        close_node(engine)
        release_home(scratch)  # anything else left under this test's own directory


# -- the snapshot --------------------------------------------------------------------------------
Snapshot = tuple[list[tuple[object, ...]], dict[str, tuple[object, ...]]]


def snapshot(w: World) -> Snapshot:
    """Mounts under the test's directory, and every file outside the driver's home."""
    prefix = str(w.scratch) + "/"
    table = sorted(
        (m.mount_id, m.target, m.source, m.fstype, m.root, tuple(sorted(m.options)))
        for m in mounts.mounts() if m.target.startswith(prefix)
    )
    files: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(w.scratch):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != str(w.home)]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            files[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_ino, content)
    return table, files


@contextlib.contextmanager
def unchanged(w: World) -> Iterator[None]:
    """Nothing under the test's directory (outside the home) changes in the block."""
    before = snapshot(w)
    yield
    after = snapshot(w)
    assert after[0] == before[0], "mounts changed"
    assert after[1] == before[1], "files changed"


# -- foreign things a caller (or another process) put there ---------------------------------------
def tmpfs_with_data(w: World, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "hostile", str(path)], check=True)
    w.made.append(path)
    (path / "data.txt").write_text("precious tmpfs data")
    return path


def bind(w: World, source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    w.made.append(target)


def victim_dir(w: World) -> Path:
    victims = w.outside / "victims"
    victims.mkdir(exist_ok=True)
    (victims / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return victims


# -- volumes -----------------------------------------------------------------------------------
@dataclass
class Vol:
    volume: pb.Volume
    cap: pb.VolumeCapability

    @property
    def id(self) -> str:
        return str(self.volume.volume_id)


def local_volume(w: World, name: str, cap: pb.VolumeCapability | None = None) -> Vol:
    cap = cap or mount_cap("xfs")
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap],
                                 capacity_range=pb.CapacityRange(required_bytes=400 * MiB))
    return Vol(w.controller.CreateVolume(req).volume, cap)


def shared_volume(w: World, name: str) -> Vol:
    share = w.scratch / "share"
    share.mkdir(exist_ok=True)
    cap = mount_cap(mode=RWX)
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap],
                                 capacity_range=pb.CapacityRange(required_bytes=8 * MiB),
                                 parameters={"type": "shared", "sharedRoot": str(share)})
    return Vol(w.controller.CreateVolume(req).volume, cap)


VOLUME_KINDS: dict[str, Callable[[World, str], Vol]] = {"local": local_volume, "shared": shared_volume}


def many_targets(w: World, kind: str, name: str) -> Vol:
    """A volume that may be published at many targets at once."""
    if kind == "local":
        return local_volume(w, name, mount_cap(mode=Mode.SINGLE_NODE_MULTI_WRITER))
    return shared_volume(w, name)


def stage(w: World, vol: Vol, tag: str) -> Path:
    staging = w.dir("plugins", "staging", tag)
    w.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.id, staging_target_path=str(staging), volume_capability=vol.cap,
        volume_context=vol.volume.volume_context))
    return staging


def publish_req(vol: Vol, staging: Path, target: Path) -> pb.NodePublishVolumeRequest:
    return pb.NodePublishVolumeRequest(volume_id=vol.id, staging_target_path=str(staging),
                                       target_path=str(target), volume_capability=vol.cap,
                                       volume_context=vol.volume.volume_context)


def unpublish_req(vol: Vol, target: Path) -> pb.NodeUnpublishVolumeRequest:
    return pb.NodeUnpublishVolumeRequest(volume_id=vol.id, target_path=str(target))


def unstage_req(vol: Vol, staging: Path) -> pb.NodeUnstageVolumeRequest:
    return pb.NodeUnstageVolumeRequest(volume_id=vol.id, staging_target_path=str(staging))


def undo(w: World, vol: Vol, staging: Path, *targets: Path) -> None:
    for t in targets:
        w.node.NodeUnpublishVolume(unpublish_req(vol, t))
    w.node.NodeUnstageVolume(unstage_req(vol, staging))


# -- defect 1: a regular file at the target ------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "shared"])
@pytest.mark.parametrize("staged", [False, True], ids=["never-attached", "staged"])
def test_unpublish_leaves_a_file_at_the_target_alone(world: World, kind: str, staged: bool) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-file")
    staging = stage(w, vol, "s") if staged else None
    victim = w.dir("pods", "p1") / "victim.txt"
    victim.write_text("x\n")
    try:
        with unchanged(w):
            assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, victim)) == C.FAILED_PRECONDITION
        assert victim.read_text() == "x\n"
    finally:
        if staging is not None:
            w.node.NodeUnstageVolume(unstage_req(vol, staging))


def test_unpublish_of_a_block_volume_leaves_a_file_it_did_not_create(world: World) -> None:
    w = world
    vol = local_volume(w, "pvc-blk", block_cap())
    staging = stage(w, vol, "blk")
    victim = w.dir("pods", "pb") / "dev"
    victim.write_bytes(b"not a device\n")
    try:
        with unchanged(w):
            assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, victim)) == C.FAILED_PRECONDITION
        # a file the driver did create for the volume is removed
        target = w.dir("pods", "pb2") / "dev"
        w.node.NodePublishVolume(publish_req(vol, staging, target))
        assert stat.S_ISBLK(target.stat().st_mode)
        w.node.NodeUnpublishVolume(unpublish_req(vol, target))
        assert not target.exists()
    finally:
        w.node.NodeUnstageVolume(unstage_req(vol, staging))


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_a_symlink_at_the_target_is_neither_followed_nor_removed(world: World, kind: str) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-link")
    staging = stage(w, vol, "s")
    victims = victim_dir(w)
    links = w.dir("pods", "p8")
    (links / "to-dir").symlink_to(victims)
    (links / "to-file").symlink_to(victims / "passwd")
    try:
        with unchanged(w):
            for name in ("to-dir", "to-file"):
                target = links / name
                assert code_of(w.node.NodePublishVolume, publish_req(vol, staging, target)) == (
                    C.FAILED_PRECONDITION)
                assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, target)) == (
                    C.FAILED_PRECONDITION)
    finally:
        undo(w, vol, staging)


# -- defect 2: a foreign mount at the target -------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "shared"])
@pytest.mark.parametrize("staged", [False, True], ids=["never-attached", "staged"])
def test_unpublish_never_unmounts_a_mount_that_is_not_the_volumes(
    world: World, kind: str, staged: bool
) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-tmpfs")
    staging = stage(w, vol, "s") if staged else None
    target = tmpfs_with_data(w, w.dir("pods", "p2") / "mount")
    try:
        with unchanged(w):
            assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, target)) == C.FAILED_PRECONDITION
        assert (target / "data.txt").read_text() == "precious tmpfs data"
    finally:
        if staging is not None:
            w.node.NodeUnstageVolume(unstage_req(vol, staging))


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_unstage_never_unmounts_a_mount_that_is_not_the_volumes(world: World, kind: str) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-stg")
    staging = tmpfs_with_data(w, w.dir("plugins", "staging", "foreign"))
    with unchanged(w):
        assert code_of(w.node.NodeUnstageVolume, unstage_req(vol, staging)) == C.FAILED_PRECONDITION
    assert (staging / "data.txt").read_text() == "precious tmpfs data"


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_unpublish_stops_at_a_foreign_mount_stacked_on_the_volume(world: World, kind: str) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-stack")
    staging = stage(w, vol, "s")
    target = w.dir("pods", "p3") / "mount"
    w.node.NodePublishVolume(publish_req(vol, staging, target))
    (target / "mine.txt").write_text("the volume's")
    bind(w, victim_dir(w), target)  # someone stacks a bind of outside/ over the published volume
    try:
        with unchanged(w):
            assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, target)) == C.FAILED_PRECONDITION
    finally:
        subprocess.run(["umount", str(target)], check=True)  # ours, by exact path
        undo(w, vol, staging, target)
    assert not target.exists()


# -- defect 3: symlink races --------------------------------------------------------------------
class Flipper(threading.Thread):
    """Flips ``link`` between pointing at ``a`` and at ``b`` (atomic renames) until stopped."""

    def __init__(self, link: Path, a: str, b: str) -> None:
        super().__init__(daemon=True)
        self.link, self.a, self.b = link, a, b
        self.stop = threading.Event()
        self.flips = 0

    def run(self) -> None:
        tmp = self.link.with_name(self.link.name + ".new")
        while not self.stop.is_set():
            for dest in (self.a, self.b):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(dest)
                os.replace(tmp, self.link)
                self.flips += 1


RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Swapper(threading.Thread):
    """Swaps a real directory and a symlink to outside/ back and forth (RENAME_EXCHANGE):
    at any instant ``a`` is either the real directory or the way out."""

    def __init__(self, a: Path, b: Path) -> None:
        super().__init__(daemon=True)
        self.a, self.b = a, b
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            exchange(self.a, self.b)


def race(w: World, vol: Vol, staging: Path, target_of: Callable[[int], Path], flipper: threading.Thread,
         stop: threading.Event) -> list[int]:
    """Publish ``RACE_ROUNDS`` times while ``flipper`` runs; unpublish each success. Returns
    the rounds that succeeded. Nothing may ever appear under outside/."""
    outside_before = snapshot(w)[1]
    outside = {k: v for k, v in outside_before.items() if k.startswith(str(w.outside))}
    ok: list[int] = []
    flipper.start()
    try:
        for i in range(RACE_ROUNDS):
            target = target_of(i)
            code = code_of(w.node.NodePublishVolume, publish_req(vol, staging, target))
            assert code in (C.OK, C.FAILED_PRECONDITION, C.INVALID_ARGUMENT), (i, code)
            escaped = [m.target for m in mounts.mounts() if m.target.startswith(str(w.outside) + "/")]
            assert not escaped, f"round {i}: a publish was mounted outside the allowed root at {escaped}"
            if code == C.OK:
                ok.append(i)
    finally:
        stop.set()
        flipper.join()
    after = {k: v for k, v in snapshot(w)[1].items() if k.startswith(str(w.outside))}
    assert after == outside, "something was created or changed outside the allowed root"
    return ok


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_symlink_flipped_during_publish_never_lets_a_mount_escape(world: World, kind: str) -> None:
    """The issue's race: ``A/sw`` flips between ``real`` and ``../outside`` while
    NodePublish targets ``A/sw/m<i>``. A symlink below the root is never followed, so every
    such publish is FAILED_PRECONDITION and nothing lands anywhere."""
    w = world
    vol = many_targets(w, kind, "pvc-race")
    staging = stage(w, vol, "race")
    (w.root / "real").mkdir()
    link = w.root / "sw"
    link.symlink_to("real")
    flipper = Flipper(link, "real", os.path.relpath(w.outside, w.root))
    try:
        ok = race(w, vol, staging, lambda i: link / f"m{i}", flipper, flipper.stop)
        assert ok == [] and flipper.flips > 0
        assert list((w.root / "real").iterdir()) == []
    finally:
        w.node.NodeUnstageVolume(unstage_req(vol, staging))


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_directory_swapped_for_a_symlink_during_publish_mounts_only_inside(world: World, kind: str) -> None:
    """A real directory and a symlink to outside/ trade places (RENAME_EXCHANGE) while
    NodePublish targets ``A/d/m<i>``: some publishes find the directory and succeed — into
    that very directory, wherever it is at the time — and the others are refused; none
    reaches outside/."""
    w = world
    vol = many_targets(w, kind, "pvc-swap")
    staging = stage(w, vol, "swap")
    real, link = w.root / "d", w.root / "d-link"
    real.mkdir()
    real_ino = real.stat().st_ino
    link.symlink_to(os.path.relpath(w.outside, w.root))
    swapper = Swapper(real, link)
    try:
        ok = race(w, vol, staging, lambda i: real / f"m{i}", swapper, swapper.stop)
        # the directory is wherever the last exchange left it
        home_of_dir = real if not real.is_symlink() else link
        assert home_of_dir.stat().st_ino == real_ino
        published = {m.target for m in mounts.mounts() if m.target.startswith(str(w.root) + "/")}
        for i in ok:
            assert str(home_of_dir / f"m{i}") in published
            w.node.NodeUnpublishVolume(unpublish_req(vol, home_of_dir / f"m{i}"))
        assert list(home_of_dir.iterdir()) == []
    finally:
        w.node.NodeUnstageVolume(unstage_req(vol, staging))


# -- mount-namespace tricks -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "shared"])
def test_publish_never_goes_through_a_mount_inside_the_root(world: World, kind: str) -> None:
    """``A/bound`` is a bind mount of a directory outside the root: a target below it would
    create and mount outside. Refused, nothing created."""
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-through")
    staging = stage(w, vol, "s")
    bound = w.dir("bound")
    bind(w, victim_dir(w), bound)
    try:
        with unchanged(w):
            for target in (bound / "m", bound / "pods" / "p" / "m"):
                assert code_of(w.node.NodePublishVolume, publish_req(vol, staging, target)) == (
                    C.FAILED_PRECONDITION)
                assert code_of(w.node.NodeUnpublishVolume, unpublish_req(vol, target)) == (
                    C.FAILED_PRECONDITION)
    finally:
        undo(w, vol, staging)


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_publish_onto_a_foreign_mount_is_already_exists(world: World, kind: str) -> None:
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-onto")
    staging = stage(w, vol, "s")
    target = w.dir("pods", "p4", "mount")
    bind(w, victim_dir(w), target)
    try:
        with unchanged(w):
            assert code_of(w.node.NodePublishVolume, publish_req(vol, staging, target)) == C.ALREADY_EXISTS
    finally:
        undo(w, vol, staging)


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_a_target_inside_a_volume_is_refused(world: World, kind: str) -> None:
    """A target below a staging mount (this volume's own, or another one's) would write into
    that volume: paths never cross a mount below the root."""
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-inside")
    staging = stage(w, vol, "s")
    try:
        with unchanged(w):
            assert code_of(w.node.NodePublishVolume, publish_req(vol, staging, staging / "m")) == (
                C.FAILED_PRECONDITION)
    finally:
        undo(w, vol, staging)


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_a_staging_path_that_is_a_foreign_mount_is_not_staged(world: World, kind: str) -> None:
    """NodePublish with a "staging path" that holds some other mount must not bind it."""
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-fake")
    fake = tmpfs_with_data(w, w.dir("plugins", "staging", "fake"))
    target = w.dir("pods", "p5") / "mount"
    with unchanged(w):
        assert code_of(w.node.NodePublishVolume, publish_req(vol, fake, target)) == C.FAILED_PRECONDITION


# -- defect 6: the driver's home and pools --------------------------------------------------------
def test_home_pools_and_shared_roots_are_never_node_paths(world: World) -> None:
    w = world
    vol = local_volume(w, "pvc-home")
    shared = shared_volume(w, "pvc-home-shared")
    staging = stage(w, vol, "s")
    pool = w.engine.pool("test").mountpoint
    share_root = w.root / "share-in-root"
    share_root.mkdir()
    inside_share = shared_volume_at(w, share_root)
    forbidden = [w.home, w.home / "x", pool, pool / "volumes", pool / "volumes" / "new",
                 share_root, share_root / "pvc-x", w.home.parent]
    try:
        with unchanged(w):
            for path in forbidden:
                for v in (vol, shared, inside_share):
                    pub = publish_req(v, staging, path)
                    assert code_of(w.node.NodePublishVolume, pub) == C.INVALID_ARGUMENT, path
                    assert code_of(w.node.NodeUnpublishVolume, unpublish_req(v, path)) == (
                        C.INVALID_ARGUMENT), path
                    assert code_of(w.node.NodeUnstageVolume, unstage_req(v, path)) == C.INVALID_ARGUMENT
                    st = pb.NodeStageVolumeRequest(volume_id=v.id, staging_target_path=str(path),
                                                   volume_capability=v.cap)
                    assert code_of(w.node.NodeStageVolume, st) == C.INVALID_ARGUMENT, path
        assert mounts.mount_at(pool) is not None and (pool / "volumes" / "pvc-home.img").exists()
    finally:
        w.node.NodeUnstageVolume(unstage_req(vol, staging))


def shared_volume_at(w: World, root: Path) -> Vol:
    cap = mount_cap(mode=RWX)
    req = pb.CreateVolumeRequest(name="pvc-in-root", volume_capabilities=[cap],
                                 capacity_range=pb.CapacityRange(required_bytes=8 * MiB),
                                 parameters={"type": "shared", "sharedRoot": str(root)})
    return Vol(w.controller.CreateVolume(req).volume, cap)


# -- what still works -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "shared"])
def test_the_driver_removes_exactly_what_it_created(world: World, kind: str) -> None:
    """The honest path through the same driver: the target it creates is removed at
    unpublish, an empty directory the CO made stays, and nothing else changes."""
    w = world
    vol = VOLUME_KINDS[kind](w, "pvc-honest")
    staging = stage(w, vol, "s")
    made_by_driver = w.dir("pods", "p6") / "mount"
    made_by_co = w.dir("pods", "p7", "mount")
    try:
        with unchanged(w):
            for target in (made_by_driver, made_by_co):
                w.node.NodePublishVolume(publish_req(vol, staging, target))
                (target / "f").write_text(target.parent.name)
                w.node.NodeUnpublishVolume(unpublish_req(vol, target))
                w.node.NodeUnpublishVolume(unpublish_req(vol, target))  # idempotent
                (staging / "f").unlink()
    finally:
        undo(w, vol, staging)
    assert not made_by_driver.exists() and made_by_co.is_dir()
