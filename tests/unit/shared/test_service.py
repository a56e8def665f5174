"""SharedVolumes, the service every adapter of shared mode calls: one view per home, ids,
roots it does not know, and the answers the CSI backend translates."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.csi.backend import SHARED_PREFIX, AccessMode, BackendConfig, Capability, VolumeRequest
from statehold.csi.backend_shared import SharedBackend
from statehold.errors import InvalidArgument, NotFound
from statehold.shared.ids import PREFIX, make_id, split_id
from statehold.shared.parameters import VolumeClass
from statehold.shared.service import Origin, SharedVolumes, UnknownRoot
from statehold.shared.types import DeletionPolicy, SourceKind

MiB = 1024 * 1024


@pytest.fixture
def share(scratch: Path) -> Path:
    path = scratch / "share"
    path.mkdir()
    return path


def klass(share: Path, **extra: str) -> VolumeClass:
    return VolumeClass.from_parameters({"type": "shared", "sharedRoot": str(share), **extra})


def test_ids_are_the_csi_drivers() -> None:
    assert PREFIX == SHARED_PREFIX
    assert split_id(make_id("abc123", "pvc-1")) == ("abc123", "pvc-1")
    for bad in ("fast/pvc-1", "shared/abc/../x", "shared//pvc-1", "shared/abc/pvc/1"):
        with pytest.raises(InvalidArgument):
            split_id(bad)


@pytest.mark.parametrize(("params", "message"), [
    ({"deletionPolicy": "shred"}, "deletionPolicy"),
    ({"enforceQuota": "yes"}, "enforceQuota"),
    ({}, "sharedRoot"),
])
def test_class_parameters_are_refused_by_name(share: Path, params: dict[str, str], message: str) -> None:
    base = {"sharedRoot": str(share)} if params else {}
    with pytest.raises(InvalidArgument, match=message):
        VolumeClass.from_parameters({**base, **params})


def test_class_reads_policy_and_enforcement(share: Path) -> None:
    cls = klass(share, deletionPolicy=" Archive ", enforceQuota="TRUE")
    assert (cls.policy, cls.enforce, cls.root.path) == (DeletionPolicy.ARCHIVE, True, share)


def test_the_csi_plugin_and_the_agent_of_one_home_see_the_same_volumes(scratch: Path, share: Path) -> None:
    plugin = SharedBackend(BackendConfig(home=scratch / "home", node_id="n1"))
    cap = Capability(mode=AccessMode.MULTI_NODE_MULTI_WRITER, block=False)
    info = plugin.create_volume(VolumeRequest(name="pvc-1", required_bytes=4 * MiB, limit_bytes=0,
                                              capabilities=(cap,),
                                              parameters={"type": "shared", "sharedRoot": str(share)}))
    agent = SharedVolumes(scratch / "home")
    rec = agent.get_volume(info.volume_id)
    assert (rec.id, rec.volume.size, rec.context) == (info.volume_id, info.capacity_bytes, info.context)
    assert agent.known() == [rec.key]
    assert SharedVolumes(scratch / "elsewhere").known() == []


def test_record_context_describes_the_root(scratch: Path, share: Path) -> None:
    rec = SharedVolumes(scratch / "home").create_volume("pvc-1", MiB, klass(share))
    assert rec.context == {"statehold.io/type": "shared", "rootKey": rec.key, "name": "pvc-1",
                           "sharedRoot": str(share)}
    assert rec.id == make_id(rec.key, "pvc-1") and rec.source_id is None


def test_an_unknown_root_is_its_own_not_found(scratch: Path, share: Path) -> None:
    rec = SharedVolumes(scratch / "home").create_volume("pvc-1", MiB, klass(share))
    stranger = SharedVolumes(scratch / "other")
    for call in (stranger.get_volume, stranger.delete_volume, stranger.usage,
                 lambda vid: stranger.expand_volume(vid, 2 * MiB)):
        with pytest.raises(UnknownRoot):
            call(rec.id)
    with pytest.raises(UnknownRoot):
        stranger.learn(rec.id, {})
    assert issubclass(UnknownRoot, NotFound)


def test_a_node_learns_a_root_from_the_volume_context(scratch: Path, share: Path) -> None:
    rec = SharedVolumes(scratch / "home").create_volume("pvc-1", MiB, klass(share))
    node = SharedVolumes(scratch / "node")
    with pytest.raises(InvalidArgument, match="describes root"):
        node.learn(rec.id, {"sharedRoot": str(scratch)})
    assert node.known() == []
    assert node.learn(rec.id, rec.context) == rec.root
    assert node.known() == [rec.key] and node.get_volume(rec.id).volume.size == MiB


def test_clones_stay_on_their_root_and_name_their_origin(scratch: Path, share: Path) -> None:
    volumes = SharedVolumes(scratch / "home")
    rec = volumes.create_volume("pvc-1", MiB, klass(share))
    snap = volumes.create_snapshot(rec.id, "snap-1")
    assert (snap.id, snap.volume_id) == (make_id(rec.key, "snap-1"), rec.id)
    clone = volumes.create_volume("pvc-2", MiB, klass(share), Origin(SourceKind.SNAPSHOT, snap.id))
    assert clone.source_id == snap.id and clone.volume.source is not None
    other = scratch / "other-share"
    other.mkdir()
    with pytest.raises(InvalidArgument, match="same shared root"):
        volumes.create_volume("pvc-3", MiB, klass(other), Origin(SourceKind.VOLUME, rec.id))
    assert [s.id for s in volumes.list_snapshots(rec.id)] == [snap.id]
    assert [r.id for r in volumes.list_volumes()] == sorted([rec.id, clone.id])


def test_expand_never_shrinks_and_mount_false_uses_the_root_as_it_is(scratch: Path, share: Path) -> None:
    volumes = SharedVolumes(scratch / "home")
    rec = volumes.create_volume("pvc-1", 4 * MiB, klass(share))
    assert volumes.expand_volume(rec.id, MiB).size == 4 * MiB
    assert volumes.expand_volume(rec.id, 8 * MiB, mount=False).size == 8 * MiB
    assert volumes.get_volume(rec.id).volume.size == 8 * MiB


def test_delete_reports_a_missing_volume_on_a_known_root(scratch: Path, share: Path) -> None:
    volumes = SharedVolumes(scratch / "home")
    rec = volumes.create_volume("pvc-1", MiB, klass(share, deletionPolicy="retain"))
    assert volumes.delete_volume(rec.id) == share / "pvc-1"
    with pytest.raises(NotFound) as err:
        volumes.delete_volume(make_id(rec.key, "pvc-9"))
    assert not isinstance(err.value, UnknownRoot)


def test_oversize_names_volumes_by_id(scratch: Path, share: Path) -> None:
    volumes = SharedVolumes(scratch / "home")
    big = volumes.create_volume("pvc-big", MiB, klass(share))
    volumes.create_volume("pvc-ok", MiB, klass(share))
    (share / "pvc-big" / "f").write_bytes(b"x" * (2 * MiB))
    assert [(vid, e.reason) for vid, e in volumes.oversize()] == [(big.id, "OverSize")]
