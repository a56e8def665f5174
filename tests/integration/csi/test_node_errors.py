"""Node RPCs: the spec's error-table rows, idempotency, access modes, read-only."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import NODE_ID, Driver, MiB, block_cap, code_of, mount_cap

pytestmark = [pytest.mark.root]

C = grpc.StatusCode
Mode = pb.VolumeCapability.AccessMode


def make(d: Driver, name: str = "pvc-n", cap: pb.VolumeCapability | None = None) -> pb.Volume:
    cap = cap or mount_cap("xfs")
    req = pb.CreateVolumeRequest(
        name=name, volume_capabilities=[cap], capacity_range=pb.CapacityRange(required_bytes=400 * MiB)
    )
    return d.controller.CreateVolume(req).volume


def stage(d: Driver, vol: pb.Volume, tag: str, cap: pb.VolumeCapability | None = None) -> Path:
    staging = d.staging(tag)
    d.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=cap or mount_cap()
        )
    )
    return staging


def publish_req(
    vol: pb.Volume, staging: Path, target: Path, cap: pb.VolumeCapability | None = None, ro: bool = False
) -> pb.NodePublishVolumeRequest:
    return pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id,
        staging_target_path=str(staging),
        target_path=str(target),
        volume_capability=cap or mount_cap(),
        readonly=ro,
    )


def cleanup(d: Driver, vol: pb.Volume, staging: Path, *targets: Path) -> None:
    for t in targets:
        d.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(t)))
    d.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
    )


def mountinfo_targets(driver: Driver) -> set[str]:
    """The mount points these requests name: /etc and anything under this driver's kubelet
    directory (other tests, in parallel workers, mount elsewhere at the same time)."""
    mine = str(driver.kubelet)
    return {
        t for t in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
        if t == "/etc" or t == mine or t.startswith(mine + "/")
    }


# ---- NodeStageVolume ---------------------------------------------------------------------


def test_stage_missing_fields_and_bad_paths_are_invalid(driver: Driver) -> None:
    vol = make(driver)
    staging = str(driver.staging("s"))
    st = driver.node.NodeStageVolume
    before = mountinfo_targets(driver)
    for req in (
        pb.NodeStageVolumeRequest(staging_target_path=staging, volume_capability=mount_cap()),
        pb.NodeStageVolumeRequest(volume_id=vol.volume_id, volume_capability=mount_cap()),
        pb.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging),
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path="/etc", volume_capability=mount_cap()
        ),
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=staging + "/../../x", volume_capability=mount_cap()
        ),
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=staging,
            volume_capability=mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER),
        ),
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=staging, volume_capability=block_cap()
        ),
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=staging, volume_capability=mount_cap("ext4")
        ),
    ):
        assert code_of(st, req) == C.INVALID_ARGUMENT, req
    assert mountinfo_targets(driver) == before


def test_stage_unknown_volume_is_not_found(driver: Driver) -> None:
    req = pb.NodeStageVolumeRequest(
        volume_id="test/nosuch", staging_target_path=str(driver.staging("s")), volume_capability=mount_cap()
    )
    assert code_of(driver.node.NodeStageVolume, req) == C.NOT_FOUND


def test_stage_path_holding_another_volume_is_already_exists(driver: Driver) -> None:
    a, b = make(driver, "pvc-a"), make(driver, "pvc-b")
    staging = stage(driver, a, "shared-path")
    try:
        req = pb.NodeStageVolumeRequest(
            volume_id=b.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()
        )
        assert code_of(driver.node.NodeStageVolume, req) == C.ALREADY_EXISTS
    finally:
        cleanup(driver, a, staging)


def test_stage_in_flight_is_aborted(driver: Driver) -> None:
    vol = make(driver)
    req = pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(driver.staging("s")), volume_capability=mount_cap()
    )
    with driver.server.locks.hold(vol.volume_id):
        assert code_of(driver.node.NodeStageVolume, req) == C.ABORTED


def test_stage_applies_mount_flags(driver: Driver) -> None:
    vol = make(driver)
    staging = driver.staging("flags")
    driver.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=mount_cap(flags=("noatime",)),
        )
    )
    try:
        line = next(
            x for x in Path("/proc/self/mountinfo").read_text().splitlines() if x.split()[4] == str(staging)
        )
        assert "noatime" in line.split()[5].split(",")
    finally:
        cleanup(driver, vol, staging)


# ---- NodeUnstageVolume -------------------------------------------------------------------


def test_unstage_rows(driver: Driver) -> None:
    un = driver.node.NodeUnstageVolume
    staging = str(driver.staging("u"))
    assert code_of(un, pb.NodeUnstageVolumeRequest(staging_target_path=staging)) == C.INVALID_ARGUMENT
    assert code_of(un, pb.NodeUnstageVolumeRequest(volume_id="test/x")) == C.INVALID_ARGUMENT
    assert code_of(un, pb.NodeUnstageVolumeRequest(volume_id="test/nosuch", staging_target_path=staging)) == (
        C.NOT_FOUND
    )
    vol = make(driver)
    assert (
        code_of(un, pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging)) == C.OK
    )


# ---- NodePublishVolume -------------------------------------------------------------------


def test_publish_missing_fields_are_invalid_and_missing_staging_is_failed_precondition(
    driver: Driver,
) -> None:
    vol = make(driver)
    staging, target = driver.staging("p"), driver.target("p")
    pub = driver.node.NodePublishVolume
    full = publish_req(vol, staging, target)
    for field in ("volume_id", "target_path", "volume_capability"):
        req = pb.NodePublishVolumeRequest()
        req.CopyFrom(full)
        req.ClearField(field)  # type: ignore[arg-type]
        assert code_of(pub, req) == C.INVALID_ARGUMENT, field
    outside = publish_req(vol, staging, Path("/tmp/statehold-not-allowed"))
    assert code_of(pub, outside) == C.INVALID_ARGUMENT
    no_staging = pb.NodePublishVolumeRequest()
    no_staging.CopyFrom(full)
    no_staging.ClearField("staging_target_path")
    assert code_of(pub, no_staging) == C.FAILED_PRECONDITION
    assert code_of(pub, full) == C.FAILED_PRECONDITION  # not staged yet
    assert not target.exists()


def test_publish_unknown_volume_is_not_found(driver: Driver) -> None:
    req = publish_req(pb.Volume(volume_id="test/nosuch"), driver.staging("x"), driver.target("x"))
    assert code_of(driver.node.NodePublishVolume, req) == C.NOT_FOUND


def test_publish_read_only_is_honoured_and_mismatch_is_already_exists(driver: Driver) -> None:
    cap = mount_cap(mode=Mode.SINGLE_NODE_MULTI_WRITER)
    vol = make(driver, cap=cap)
    staging = stage(driver, vol, "ro", cap)
    rw_target, ro_target = driver.target("rw"), driver.target("ro")
    try:
        driver.node.NodePublishVolume(publish_req(vol, staging, rw_target, cap))
        (rw_target / "f").write_text("hello")
        driver.node.NodePublishVolume(publish_req(vol, staging, ro_target, cap, ro=True))
        assert (ro_target / "f").read_text() == "hello"
        with pytest.raises(OSError):
            (ro_target / "g").write_text("nope")
        again_rw = publish_req(vol, staging, ro_target, cap)
        assert code_of(driver.node.NodePublishVolume, again_rw) == C.ALREADY_EXISTS
        again_ro = publish_req(vol, staging, rw_target, cap, ro=True)
        assert code_of(driver.node.NodePublishVolume, again_ro) == C.ALREADY_EXISTS
    finally:
        cleanup(driver, vol, staging, rw_target, ro_target)
    assert not rw_target.exists() and not ro_target.exists()


@pytest.mark.parametrize(
    "mode", [Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY]
)
def test_single_target_modes_publish_once(driver: Driver, mode: int) -> None:
    """The spec's table for a second NodePublishVolume on one node: a non-MULTI mode at
    another target path "exceeds capabilities"."""
    cap = mount_cap(mode=mode)
    vol = make(driver, cap=cap)
    staging = stage(driver, vol, "rwop", cap)
    first, second = driver.target("one"), driver.target("two")
    try:
        driver.node.NodePublishVolume(publish_req(vol, staging, first, cap))
        assert (
            code_of(driver.node.NodePublishVolume, publish_req(vol, staging, second, cap))
            == C.FAILED_PRECONDITION
        )
        assert not second.exists()
    finally:
        cleanup(driver, vol, staging, first)


def test_single_node_multi_writer_publishes_many(driver: Driver) -> None:
    cap = mount_cap(mode=Mode.SINGLE_NODE_MULTI_WRITER)
    vol = make(driver, cap=cap)
    staging = stage(driver, vol, "multi", cap)
    a, b = driver.target("a"), driver.target("b")
    try:
        driver.node.NodePublishVolume(publish_req(vol, staging, a, cap))
        driver.node.NodePublishVolume(publish_req(vol, staging, b, cap))
        (a / "x").write_text("shared")
        assert (b / "x").read_text() == "shared"
    finally:
        cleanup(driver, vol, staging, a, b)


def test_block_publish_read_only_refuses_writes(driver: Driver) -> None:
    cap = block_cap()
    vol = make(driver, "pvc-blk", cap)
    staging = stage(driver, vol, "blk", cap)
    target = driver.target("blk")
    try:
        driver.node.NodePublishVolume(publish_req(vol, staging, target, cap, ro=True))
        with pytest.raises(OSError), open(target, "r+b") as f:
            f.write(b"x")
        assert (
            code_of(driver.node.NodePublishVolume, publish_req(vol, staging, target, cap)) == C.ALREADY_EXISTS
        )
    finally:
        cleanup(driver, vol, staging, target)


# ---- NodeUnpublishVolume -----------------------------------------------------------------


def test_unpublish_rows(driver: Driver) -> None:
    un = driver.node.NodeUnpublishVolume
    target = str(driver.target("u"))
    assert code_of(un, pb.NodeUnpublishVolumeRequest(target_path=target)) == C.INVALID_ARGUMENT
    assert code_of(un, pb.NodeUnpublishVolumeRequest(volume_id="test/x")) == C.INVALID_ARGUMENT
    assert (
        code_of(un, pb.NodeUnpublishVolumeRequest(volume_id="test/x", target_path="/etc"))
        == C.INVALID_ARGUMENT
    )
    assert (
        code_of(un, pb.NodeUnpublishVolumeRequest(volume_id="test/nosuch", target_path=target)) == C.NOT_FOUND
    )
    vol = make(driver)
    assert code_of(un, pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=target)) == C.OK


# ---- NodeGetVolumeStats / NodeExpandVolume ------------------------------------------------


def test_stats_rows_and_abnormal_condition(driver: Driver) -> None:
    gs = driver.node.NodeGetVolumeStats
    vol = make(driver)
    staging = stage(driver, vol, "st")
    target = driver.target("st")
    driver.node.NodePublishVolume(publish_req(vol, staging, target))
    try:
        assert code_of(gs, pb.NodeGetVolumeStatsRequest(volume_path=str(target))) == C.INVALID_ARGUMENT
        assert code_of(gs, pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id)) == C.INVALID_ARGUMENT
        assert code_of(
            gs, pb.NodeGetVolumeStatsRequest(volume_id="test/nosuch", volume_path=str(target))
        ) == (C.NOT_FOUND)
        elsewhere = driver.target("not-mounted")
        elsewhere.mkdir()
        assert code_of(
            gs, pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(elsewhere))
        ) == (C.NOT_FOUND)
        resp = gs(pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target)))
        units = {u.unit for u in resp.usage}
        assert units == {pb.VolumeUsage.BYTES, pb.VolumeUsage.INODES} and not resp.volume_condition.abnormal
        backing = Path(driver.server.router.local.node.pool("test").mountpoint) / "volumes" / "pvc-n.img"  # type: ignore[attr-defined]
        hidden = backing.with_suffix(".hidden")
        backing.rename(hidden)
        try:
            resp = gs(pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target)))
            assert resp.volume_condition.abnormal
        finally:
            hidden.rename(backing)
    finally:
        cleanup(driver, vol, staging, target)


def test_node_expand_rows(driver: Driver) -> None:
    ne = driver.node.NodeExpandVolume
    vol = make(driver)
    staging = stage(driver, vol, "ex")
    try:
        assert code_of(ne, pb.NodeExpandVolumeRequest(volume_path=str(staging))) == C.INVALID_ARGUMENT
        assert code_of(ne, pb.NodeExpandVolumeRequest(volume_id=vol.volume_id)) == C.INVALID_ARGUMENT
        assert code_of(ne, pb.NodeExpandVolumeRequest(volume_id="test/nosuch", volume_path=str(staging))) == (
            C.NOT_FOUND
        )
        other = driver.target("nowhere")
        other.mkdir()
        assert (
            code_of(ne, pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=str(other)))
            == C.NOT_FOUND
        )
        resp = ne(
            pb.NodeExpandVolumeRequest(
                volume_id=vol.volume_id,
                volume_path=str(staging),
                capacity_range=pb.CapacityRange(required_bytes=600 * MiB),
            )
        )
        assert resp.capacity_bytes == 600 * MiB
    finally:
        cleanup(driver, vol, staging)


# ---- NodeGetInfo / NodeGetCapabilities / Identity ------------------------------------------


def test_node_info_and_capabilities(driver: Driver) -> None:
    info = driver.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == NODE_ID and info.max_volumes_per_node > 0
    assert dict(info.accessible_topology.segments) == {"topology.statehold.io/node": NODE_ID}
    caps = {c.rpc.type for c in driver.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities}
    T = pb.NodeServiceCapability.RPC
    assert caps == {
        T.STAGE_UNSTAGE_VOLUME,
        T.GET_VOLUME_STATS,
        T.EXPAND_VOLUME,
        T.VOLUME_CONDITION,
        T.SINGLE_NODE_MULTI_WRITER,
    }


def test_identity(driver: Driver) -> None:
    info = driver.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "csi.statehold.io" and info.vendor_version
    caps = driver.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    S = pb.PluginCapability.Service
    assert services == {S.CONTROLLER_SERVICE, S.VOLUME_ACCESSIBILITY_CONSTRAINTS,
                        S.GROUP_CONTROLLER_SERVICE}
    assert [c.volume_expansion.type for c in caps if c.HasField("volume_expansion")] == [
        pb.PluginCapability.VolumeExpansion.ONLINE
    ]
    assert driver.identity.Probe(pb.ProbeRequest()).ready.value is True


def test_stats_and_expand_at_a_path_where_the_volume_is_not_are_not_found(driver: Driver) -> None:
    vol = make(driver)
    for path in ("some/path", "/etc", "/nonexistent/x"):
        stats = pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=path)
        assert code_of(driver.node.NodeGetVolumeStats, stats) == C.NOT_FOUND
        expand = pb.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=path)
        assert code_of(driver.node.NodeExpandVolume, expand) == C.NOT_FOUND


def test_restage_with_other_readonly_flag_is_already_exists(driver: Driver) -> None:
    vol = make(driver)
    staging = stage(driver, vol, "flagged")
    try:
        ro = pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=mount_cap(flags=("ro",)),
        )
        assert code_of(driver.node.NodeStageVolume, ro) == C.ALREADY_EXISTS
    finally:
        cleanup(driver, vol, staging)


def test_stage_at_a_second_path_exceeds_capabilities(driver: Driver) -> None:
    vol = make(driver)
    staging = stage(driver, vol, "first")
    try:
        second = pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(driver.staging("second")),
            volume_capability=mount_cap(),
        )
        assert code_of(driver.node.NodeStageVolume, second) == C.FAILED_PRECONDITION
    finally:
        cleanup(driver, vol, staging)


def test_target_in_a_state_the_driver_cannot_fix_is_failed_precondition_and_untouched(driver: Driver) -> None:
    vol = make(driver)
    staging = stage(driver, vol, "odd")
    try:
        as_file = driver.target("file")
        as_file.write_text("not a directory")
        assert (
            code_of(driver.node.NodePublishVolume, publish_req(vol, staging, as_file))
            == C.FAILED_PRECONDITION
        )
        assert as_file.read_text() == "not a directory"
        full = driver.target("full")
        full.mkdir()
        (full / "precious").write_text("data written beside any mount")
        unpub = pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(full))
        assert code_of(driver.node.NodeUnpublishVolume, unpub) == C.FAILED_PRECONDITION
        assert (full / "precious").read_text() == "data written beside any mount"
    finally:
        cleanup(driver, vol, staging)
