"""Controller RPCs: one test per row of the spec's error tables (plus missing fields).

Each bad request is checked for its exact code AND for having changed nothing."""

from __future__ import annotations

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import NODE_ID, Driver, GiB, MiB, block_cap, code_of, mount_cap

pytestmark = [pytest.mark.root]

C = grpc.StatusCode
Mode = pb.VolumeCapability.AccessMode
HERE = {"topology.statehold.io/node": NODE_ID}


def create_req(name: str = "pvc-a", size: int = 400 * MiB, **kw: object) -> pb.CreateVolumeRequest:
    kw.setdefault("volume_capabilities", [mount_cap("xfs")])
    return pb.CreateVolumeRequest(name=name, capacity_range=pb.CapacityRange(required_bytes=size), **kw)  # type: ignore[arg-type]


def volume_ids(d: Driver) -> list[str]:
    return [e.volume.volume_id for e in d.controller.ListVolumes(pb.ListVolumesRequest()).entries]


# ---- CreateVolume --------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(pb.CreateVolumeRequest(volume_capabilities=[mount_cap()]), id="missing-name"),
        pytest.param(pb.CreateVolumeRequest(name="pvc-a"), id="missing-capabilities"),
        pytest.param(
            pb.CreateVolumeRequest(name="pvc-a", volume_capabilities=[pb.VolumeCapability()]),
            id="empty-capability",
        ),
        pytest.param(create_req(volume_capabilities=[mount_cap(mode=Mode.UNKNOWN)]), id="unknown-mode"),
        pytest.param(
            create_req(volume_capabilities=[mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER)]), id="rwx"
        ),
        pytest.param(create_req(volume_capabilities=[mount_cap(mode=Mode.MULTI_NODE_READER_ONLY)]), id="rox"),
        pytest.param(
            create_req(volume_capabilities=[block_cap(Mode.MULTI_NODE_SINGLE_WRITER)]), id="block-multi"
        ),
        pytest.param(create_req(volume_capabilities=[mount_cap("zfs")]), id="unknown-fs"),
        pytest.param(create_req(volume_capabilities=[mount_cap(), block_cap()]), id="block-and-mount"),
        pytest.param(create_req(parameters={"fsType": "vfat"}), id="unknown-fs-parameter"),
        pytest.param(create_req(parameters={"fsType": "ext4"}), id="fs-parameter-conflicts-capability"),
        pytest.param(create_req(parameters={"pool": "nosuch"}), id="unknown-pool"),
        pytest.param(create_req(parameters={"type": "nfs"}), id="unknown-type"),
        pytest.param(
            pb.CreateVolumeRequest(
                name="pvc-a", volume_capabilities=[mount_cap()], capacity_range=pb.CapacityRange()
            ),
            id="zero-range",
        ),
        pytest.param(
            pb.CreateVolumeRequest(
                name="pvc-a",
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=2 * GiB, limit_bytes=GiB),
            ),
            id="inverted-range",
        ),
        pytest.param(
            pb.CreateVolumeRequest(
                name="pvc-a",
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=-1),
            ),
            id="negative-range",
        ),
        pytest.param(
            create_req(volume_content_source=pb.VolumeContentSource()), id="content-source-without-type"
        ),
    ],
)
def test_create_volume_malformed_is_invalid_argument(driver: Driver, req: pb.CreateVolumeRequest) -> None:
    assert code_of(driver.controller.CreateVolume, req) == C.INVALID_ARGUMENT
    assert volume_ids(driver) == []


@pytest.mark.parametrize(
    "rng",
    [
        pytest.param(pb.CapacityRange(limit_bytes=100 * MiB), id="limit-below-xfs-minimum"),
        pytest.param(
            pb.CapacityRange(required_bytes=400 * MiB + 1, limit_bytes=400 * MiB + 1), id="mib-rounding"
        ),
    ],
)
def test_create_volume_unsatisfiable_capacity_is_out_of_range(driver: Driver, rng: pb.CapacityRange) -> None:
    req = pb.CreateVolumeRequest(name="pvc-a", volume_capabilities=[mount_cap("xfs")], capacity_range=rng)
    assert code_of(driver.controller.CreateVolume, req) == C.OUT_OF_RANGE
    assert volume_ids(driver) == []


def test_create_volume_exact_size_range_is_honoured(driver: Driver) -> None:
    rng = pb.CapacityRange(required_bytes=512 * MiB, limit_bytes=512 * MiB)
    vol = driver.controller.CreateVolume(
        pb.CreateVolumeRequest(name="pvc-a", volume_capabilities=[mount_cap()], capacity_range=rng)
    ).volume
    assert vol.capacity_bytes == 512 * MiB


def test_create_volume_same_name_other_size_is_already_exists(driver: Driver) -> None:
    first = driver.controller.CreateVolume(create_req(size=400 * MiB)).volume
    assert code_of(driver.controller.CreateVolume, create_req(size=800 * MiB)) == C.ALREADY_EXISTS
    assert (
        code_of(driver.controller.CreateVolume, create_req(volume_capabilities=[block_cap()]))
        == C.ALREADY_EXISTS
    )
    assert volume_ids(driver) == [first.volume_id]
    assert driver.controller.CreateVolume(create_req(size=300 * MiB)).volume == first  # fits: idempotent


def test_create_volume_from_missing_source_is_not_found(driver: Driver) -> None:
    snap = pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id="test/nosnap"))
    vol = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id="test/novol"))
    assert code_of(driver.controller.CreateVolume, create_req(volume_content_source=snap)) == C.NOT_FOUND
    assert code_of(driver.controller.CreateVolume, create_req(volume_content_source=vol)) == C.NOT_FOUND
    assert volume_ids(driver) == []


def test_create_volume_smaller_than_source_is_out_of_range(driver: Driver) -> None:
    src = driver.controller.CreateVolume(create_req("pvc-src", size=600 * MiB)).volume
    source = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
    req = create_req("pvc-clone", size=400 * MiB, volume_content_source=source)
    assert code_of(driver.controller.CreateVolume, req) == C.OUT_OF_RANGE
    assert volume_ids(driver) == [src.volume_id]


def test_create_volume_block_source_for_mount_volume_is_invalid(driver: Driver) -> None:
    src = driver.controller.CreateVolume(create_req("pvc-src", volume_capabilities=[block_cap()])).volume
    source = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
    assert code_of(driver.controller.CreateVolume, create_req("pvc-c", volume_content_source=source)) == (
        C.INVALID_ARGUMENT
    )


def test_create_volume_for_another_nodes_topology_is_resource_exhausted(driver: Driver) -> None:
    other = pb.TopologyRequirement(requisite=[pb.Topology(segments={"topology.statehold.io/node": "node-b"})])
    assert code_of(driver.controller.CreateVolume, create_req(accessibility_requirements=other)) == (
        C.RESOURCE_EXHAUSTED
    )
    here = pb.TopologyRequirement(
        requisite=[
            pb.Topology(segments={"topology.statehold.io/node": "node-b"}),
            pb.Topology(segments=HERE),
        ],
        preferred=[pb.Topology(segments=HERE)],
    )
    vol = driver.controller.CreateVolume(create_req(accessibility_requirements=here)).volume
    assert [dict(t.segments) for t in vol.accessible_topology] == [HERE]


def test_create_volume_beyond_pool_is_resource_exhausted(driver: Driver) -> None:
    assert code_of(driver.controller.CreateVolume, create_req(size=1 << 50)) == C.RESOURCE_EXHAUSTED
    assert volume_ids(driver) == []


def test_create_volume_in_flight_is_aborted(driver: Driver) -> None:
    with driver.server.locks.hold("create/pvc-a"):
        assert code_of(driver.controller.CreateVolume, create_req()) == C.ABORTED
    assert volume_ids(driver) == []


def test_create_volume_default_size_and_odd_names(driver: Driver) -> None:
    req = pb.CreateVolumeRequest(name="Sanity Volume/ÄÖ 1", volume_capabilities=[mount_cap()])
    vol = driver.controller.CreateVolume(req).volume
    assert vol.capacity_bytes == GiB and vol.volume_id.startswith("test/")
    assert driver.controller.CreateVolume(req).volume == vol


# ---- DeleteVolume ----------------------------------------------------------------------


def test_delete_volume_missing_id_is_invalid(driver: Driver) -> None:
    assert code_of(driver.controller.DeleteVolume, pb.DeleteVolumeRequest()) == C.INVALID_ARGUMENT


@pytest.mark.parametrize("vid", ["test/nosuch", "nosuchpool/v", "garbage"])
def test_delete_unknown_volume_succeeds(driver: Driver, vid: str) -> None:
    assert code_of(driver.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vid)) == C.OK


def test_delete_volume_in_use_is_failed_precondition(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req()).volume
    staging = driver.staging("inuse")
    driver.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()
        )
    )
    try:
        assert code_of(driver.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id)) == (
            C.FAILED_PRECONDITION
        )
        assert volume_ids(driver) == [vol.volume_id]
    finally:
        driver.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
        )


def test_delete_volume_in_flight_is_aborted(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req()).volume
    with driver.server.locks.hold(vol.volume_id):
        assert (
            code_of(driver.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id))
            == C.ABORTED
        )
    assert volume_ids(driver) == [vol.volume_id]


# ---- ValidateVolumeCapabilities ------------------------------------------------------------


def test_validate_missing_fields_and_unknown_volume(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req()).volume
    v = driver.controller.ValidateVolumeCapabilities
    assert (
        code_of(v, pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount_cap()]))
        == C.INVALID_ARGUMENT
    )
    assert code_of(v, pb.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id)) == C.INVALID_ARGUMENT
    unknown = pb.ValidateVolumeCapabilitiesRequest(volume_id="test/nosuch", volume_capabilities=[mount_cap()])
    assert code_of(v, unknown) == C.NOT_FOUND


def test_validate_confirms_only_what_the_volume_supports(driver: Driver) -> None:
    vol = driver.controller.CreateVolume(create_req()).volume
    v = driver.controller.ValidateVolumeCapabilities
    ok = v(
        pb.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[mount_cap("xfs")])
    )
    assert ok.HasField("confirmed") and len(ok.confirmed.volume_capabilities) == 1
    for cap in (mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER), block_cap(), mount_cap("ext4")):
        resp = v(pb.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[cap]))
        assert not resp.HasField("confirmed") and resp.message


# ---- ListVolumes / ControllerGetVolume -------------------------------------------------------


def test_list_volumes_pages_and_bad_token(driver: Driver) -> None:
    made = sorted(driver.controller.CreateVolume(create_req(f"pvc-{i}")).volume.volume_id for i in range(5))
    seen, token = [], ""
    while True:
        resp = driver.controller.ListVolumes(pb.ListVolumesRequest(max_entries=2, starting_token=token))
        assert len(resp.entries) <= 2
        seen += [e.volume.volume_id for e in resp.entries]
        assert all(not e.status.volume_condition.abnormal for e in resp.entries)
        token = resp.next_token
        if not token:
            break
    assert seen == made
    assert (
        code_of(driver.controller.ListVolumes, pb.ListVolumesRequest(starting_token="invalid-token"))
        == C.ABORTED
    )
    assert code_of(driver.controller.ListVolumes, pb.ListVolumesRequest(max_entries=-1)) == C.INVALID_ARGUMENT


def test_get_volume_rows_and_abnormal_condition(driver: Driver) -> None:
    g = driver.controller.ControllerGetVolume
    assert code_of(g, pb.ControllerGetVolumeRequest()) == C.INVALID_ARGUMENT
    assert code_of(g, pb.ControllerGetVolumeRequest(volume_id="test/nosuch")) == C.NOT_FOUND
    vol = driver.controller.CreateVolume(create_req()).volume
    resp = g(pb.ControllerGetVolumeRequest(volume_id=vol.volume_id))
    assert resp.volume.volume_id == vol.volume_id and not resp.status.volume_condition.abnormal
    backing = driver.server.router.local.node.pool("test").mountpoint / "volumes" / "pvc-a.img"  # type: ignore[attr-defined]
    hidden = backing.with_suffix(".hidden")
    backing.rename(hidden)
    try:
        resp = g(pb.ControllerGetVolumeRequest(volume_id=vol.volume_id))
        assert resp.status.volume_condition.abnormal and "missing" in resp.status.volume_condition.message
    finally:
        hidden.rename(backing)


# ---- GetCapacity -------------------------------------------------------------------------


def test_get_capacity_per_topology_segment(driver: Driver) -> None:
    gc = driver.controller.GetCapacity
    here = gc(pb.GetCapacityRequest(accessible_topology=pb.Topology(segments=HERE))).available_capacity
    assert here > GiB
    assert gc(pb.GetCapacityRequest()).available_capacity == here
    other = pb.Topology(segments={"topology.statehold.io/node": "node-b"})
    assert gc(pb.GetCapacityRequest(accessible_topology=other)).available_capacity == 0
    rwx = [mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER)]
    assert gc(pb.GetCapacityRequest(volume_capabilities=rwx)).available_capacity == 0
    resp = gc(pb.GetCapacityRequest(parameters={"pool": "test"}))
    assert resp.maximum_volume_size.value == here and resp.minimum_volume_size.value == 300 * MiB
    driver.controller.CreateVolume(create_req(size=4 * GiB))
    assert gc(pb.GetCapacityRequest()).available_capacity == here - 4 * GiB


# ---- snapshots ---------------------------------------------------------------------------


def test_create_snapshot_rows(driver: Driver) -> None:
    cs = driver.controller.CreateSnapshot
    vol = driver.controller.CreateVolume(create_req("pvc-a")).volume
    other = driver.controller.CreateVolume(create_req("pvc-b")).volume
    assert code_of(cs, pb.CreateSnapshotRequest(name="s1")) == C.INVALID_ARGUMENT
    assert code_of(cs, pb.CreateSnapshotRequest(source_volume_id=vol.volume_id)) == C.INVALID_ARGUMENT
    assert code_of(cs, pb.CreateSnapshotRequest(source_volume_id="test/nosuch", name="s1")) == C.NOT_FOUND
    snap = cs(pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="s1")).snapshot
    assert (
        code_of(cs, pb.CreateSnapshotRequest(source_volume_id=other.volume_id, name="s1")) == C.ALREADY_EXISTS
    )
    with driver.server.locks.hold("snapshot/s2"):
        assert code_of(cs, pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="s2")) == C.ABORTED
    listed = driver.controller.ListSnapshots(pb.ListSnapshotsRequest()).entries
    assert [e.snapshot.snapshot_id for e in listed] == [snap.snapshot_id]


def test_delete_snapshot_rows(driver: Driver) -> None:
    ds = driver.controller.DeleteSnapshot
    assert code_of(ds, pb.DeleteSnapshotRequest()) == C.INVALID_ARGUMENT
    assert code_of(ds, pb.DeleteSnapshotRequest(snapshot_id="test/nosuch")) == C.OK
    vol = driver.controller.CreateVolume(create_req()).volume
    snap = driver.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="s")
    ).snapshot
    with driver.server.locks.hold(f"snapshot-id/{snap.snapshot_id}"):
        assert code_of(ds, pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)) == C.ABORTED
    ds(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert (
        code_of(driver.controller.GetSnapshot, pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id))
        == C.NOT_FOUND
    )


def test_list_snapshots_filters_pages_and_bad_token(driver: Driver) -> None:
    a = driver.controller.CreateVolume(create_req("pvc-a")).volume
    b = driver.controller.CreateVolume(create_req("pvc-b")).volume
    cs = driver.controller.CreateSnapshot
    ids = [
        cs(pb.CreateSnapshotRequest(source_volume_id=a.volume_id, name=f"a{i}")).snapshot.snapshot_id
        for i in range(3)
    ]
    bid = cs(pb.CreateSnapshotRequest(source_volume_id=b.volume_id, name="b0")).snapshot.snapshot_id
    ls = driver.controller.ListSnapshots
    by_source = ls(pb.ListSnapshotsRequest(source_volume_id=a.volume_id)).entries
    assert sorted(e.snapshot.snapshot_id for e in by_source) == sorted(ids)
    assert [e.snapshot.snapshot_id for e in ls(pb.ListSnapshotsRequest(snapshot_id=bid)).entries] == [bid]
    assert list(ls(pb.ListSnapshotsRequest(snapshot_id="test/nosuch")).entries) == []
    assert list(ls(pb.ListSnapshotsRequest(source_volume_id="test/nosuch")).entries) == []
    assert list(ls(pb.ListSnapshotsRequest(snapshot_id=bid, source_volume_id=a.volume_id)).entries) == []
    first = ls(pb.ListSnapshotsRequest(max_entries=3))
    rest = ls(pb.ListSnapshotsRequest(starting_token=first.next_token))
    assert len(first.entries) == 3 and len(rest.entries) == 1 and rest.next_token == ""
    assert code_of(ls, pb.ListSnapshotsRequest(starting_token="bogus")) == C.ABORTED


# ---- ControllerExpandVolume ------------------------------------------------------------------


def test_controller_expand_rows(driver: Driver) -> None:
    ex = driver.controller.ControllerExpandVolume
    vol = driver.controller.CreateVolume(create_req(size=400 * MiB)).volume
    rng = pb.CapacityRange(required_bytes=GiB)
    assert code_of(ex, pb.ControllerExpandVolumeRequest(capacity_range=rng)) == C.INVALID_ARGUMENT
    assert code_of(ex, pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id)) == C.INVALID_ARGUMENT
    assert (
        code_of(ex, pb.ControllerExpandVolumeRequest(volume_id="test/nosuch", capacity_range=rng))
        == C.NOT_FOUND
    )
    below = pb.CapacityRange(required_bytes=100 * MiB, limit_bytes=200 * MiB)
    assert (
        code_of(ex, pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=below))
        == C.OUT_OF_RANGE
    )
    huge = pb.CapacityRange(required_bytes=1 << 50)
    assert code_of(ex, pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=huge)) == (
        C.RESOURCE_EXHAUSTED
    )
    resp = ex(pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=rng))
    assert resp.capacity_bytes == GiB and not resp.node_expansion_required  # not formatted yet
    again = ex(pb.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=rng))
    assert again.capacity_bytes == GiB


def test_controller_publish_is_not_offered(driver: Driver) -> None:
    req = pb.ControllerPublishVolumeRequest(
        volume_id="test/x", node_id=NODE_ID, volume_capability=mount_cap()
    )
    assert code_of(driver.controller.ControllerPublishVolume, req) == C.UNIMPLEMENTED


def test_kubernetes_metadata_parameters_become_labels(driver: Driver) -> None:
    params = {"csi.storage.k8s.io/pvc/name": "data-db-0", "csi.storage.k8s.io/pvc/namespace": "prod"}
    vol = driver.controller.CreateVolume(create_req(parameters=params)).volume
    labels = driver.server.router.local.node.pool("test").get_volume("pvc-a").labels  # type: ignore[attr-defined]
    assert labels["csi.storage.k8s.io/pvc/name"] == "data-db-0" and labels["csi.statehold.io/name"] == "pvc-a"
    assert vol.volume_id == "test/pvc-a"


def test_retried_clone_create_succeeds_after_its_snapshot_is_gone(driver: Driver) -> None:
    src = driver.controller.CreateVolume(create_req("pvc-src")).volume
    snap = driver.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id=src.volume_id, name="s")
    ).snapshot
    source = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
    )
    req = create_req("pvc-clone", volume_content_source=source)
    first = driver.controller.CreateVolume(req).volume
    driver.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert driver.controller.CreateVolume(req).volume == first
    other = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
    assert code_of(driver.controller.CreateVolume, create_req("pvc-clone", volume_content_source=other)) == (
        C.ALREADY_EXISTS
    )


def test_existing_name_with_unsatisfiable_range_is_already_exists(driver: Driver) -> None:
    driver.controller.CreateVolume(create_req(size=400 * MiB))
    rng = pb.CapacityRange(limit_bytes=100 * MiB)
    req = pb.CreateVolumeRequest(name="pvc-a", volume_capabilities=[mount_cap("xfs")], capacity_range=rng)
    assert code_of(driver.controller.CreateVolume, req) == C.ALREADY_EXISTS
