"""Fuzz every Controller and Node RPC through the real socket over a real pool.

Half the requests are fully random; the other half start from a valid request for that
RPC (against a real volume, snapshot and kubelet paths) with random fields kept, replaced
by random values or cleared — so the fuzz reaches the backend, mounts and all. Whatever
the mix, the answer must be OK or a code the spec uses, never INTERNAL/UNKNOWN, and the
server must stay up."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from statehold.csi.gen import csi_pb2 as pb
from tests.integration.csi.harness import Driver, MiB, mount_cap
from tests.unit.csi.strategies import messages

pytestmark = [pytest.mark.root, pytest.mark.slow]

C = grpc.StatusCode
SPEC_CODES = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.OUT_OF_RANGE,
    C.RESOURCE_EXHAUSTED,
    C.FAILED_PRECONDITION,
    C.ABORTED,
}
NOT_OFFERED = {"ControllerPublishVolume", "ControllerUnpublishVolume"}


def rpcs(service: str) -> list[str]:
    return [m.name for m in pb.DESCRIPTOR.services_by_name[service].methods]


def templates(k: str) -> dict[str, Message]:
    """A valid request per RPC, against the seeded volume test/pvc-f and snapshot."""
    cap = mount_cap("xfs")
    vid, staging, target = "test/pvc-f", f"{k}/staging/f", f"{k}/pods/f/mount"
    rng = pb.CapacityRange(required_bytes=400 * MiB)
    return {
        "CreateVolume": pb.CreateVolumeRequest(name="pvc-g", volume_capabilities=[cap], capacity_range=rng),
        "DeleteVolume": pb.DeleteVolumeRequest(volume_id="test/pvc-g"),
        "ValidateVolumeCapabilities": pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vid, volume_capabilities=[cap]
        ),
        "ListVolumes": pb.ListVolumesRequest(max_entries=1),
        "GetCapacity": pb.GetCapacityRequest(volume_capabilities=[cap]),
        "ControllerGetVolume": pb.ControllerGetVolumeRequest(volume_id=vid),
        "CreateSnapshot": pb.CreateSnapshotRequest(source_volume_id=vid, name="snap-g"),
        "DeleteSnapshot": pb.DeleteSnapshotRequest(snapshot_id="test/snap-g"),
        "ListSnapshots": pb.ListSnapshotsRequest(source_volume_id=vid),
        "GetSnapshot": pb.GetSnapshotRequest(snapshot_id="test/snap-f"),
        "ControllerExpandVolume": pb.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=800 * MiB)
        ),
        "NodeStageVolume": pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap
        ),
        "NodeUnstageVolume": pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging),
        "NodePublishVolume": pb.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap
        ),
        "NodeUnpublishVolume": pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target),
        "NodeGetVolumeStats": pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target),
        "NodeExpandVolume": pb.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=staging, capacity_range=rng
        ),
    }


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_requests_get_spec_codes_only(driver: Driver, data: st.DataObject) -> None:
    d = driver
    # (re)seed each time: a fuzzed DeleteVolume/DeleteSnapshot may have removed them (both
    # calls are idempotent; a fuzzed CreateVolume may have taken the name with another spec)
    seed = pb.CreateVolumeRequest(
        name="pvc-f",
        volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
    )
    with contextlib.suppress(grpc.RpcError):
        d.controller.CreateVolume(seed)
        d.controller.CreateSnapshot(pb.CreateSnapshotRequest(source_volume_id="test/pvc-f", name="snap-f"))
    k = str(d.kubelet)
    pool = [
        "test/pvc-f", "test/snap-f", "test/nosuch", "pvc-f", "pvc-g", "snap-f", "",
        f"{k}/staging/f", f"{k}/pods/f/mount", f"{k}/pods/g/mount", f"{k}/staging/g", "/etc",
        "xfs", "ext4", "btrfs", "fsType", "pool", "test", "type", "shared", "local", "noatime", "ro",
        "topology.statehold.io/node", "node-a",
    ]  # fmt: skip
    service = data.draw(st.sampled_from(["Controller", "Node"]))
    method = data.draw(st.sampled_from(rpcs(service)))
    desc = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    cls = desc.input_type._concrete_class
    noise = data.draw(messages(desc.input_type, cls, pool))
    request = cls()
    template = templates(k).get(method)
    if template is not None and data.draw(st.booleans()):
        request.CopyFrom(template)
        for field in desc.input_type.fields:  # keep, replace with noise, or clear each field
            choice = data.draw(st.sampled_from(["keep", "keep", "keep", "noise", "clear"]))
            if choice == "clear" or (choice == "noise" and not _has(noise, field.name, field.is_repeated)):
                request.ClearField(field.name)
            elif choice == "noise":
                request.ClearField(field.name)
                getattr_copy(request, noise, field.name)
    else:
        request.CopyFrom(noise)
    stub = d.controller if service == "Controller" else d.node
    detail = ""
    try:
        getattr(stub, method)(request, timeout=60)
        code = C.OK
    except grpc.RpcError as exc:
        code, detail = exc.code(), exc.details()
    event(f"{method} -> {code.name}")
    allowed = SPEC_CODES | ({C.UNIMPLEMENTED} if method in NOT_OFFERED else set())
    assert code in allowed, f"{method}({request}) -> {code}: {detail}"
    assert d.identity.Probe(pb.ProbeRequest()).ready.value  # still alive


def _has(msg: Message, name: str, repeated: bool) -> bool:
    return (
        bool(len(getattr(msg, name))) if repeated else msg.HasField(name) if _is_message(msg, name) else True
    )


def _is_message(msg: Message, name: str) -> bool:
    field = msg.DESCRIPTOR.fields_by_name[name]
    return field.message_type is not None and not field.is_repeated


def getattr_copy(dst: Message, src: Message, name: str) -> None:
    field = dst.DESCRIPTOR.fields_by_name[name]
    value = getattr(src, name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        getattr(dst, name).update(dict(value))
    elif field.is_repeated:
        getattr(dst, name).extend(value)
    elif field.message_type is not None:
        getattr(dst, name).CopyFrom(value)
    else:
        setattr(dst, name, value)
