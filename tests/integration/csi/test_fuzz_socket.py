"""Fuzz every Controller and Node RPC through the real socket over a real pool.

Random field combinations (with plausible ids and paths mixed in, so calls get past the
first check) must never produce INTERNAL/UNKNOWN or kill the server: only OK or a code
the spec uses."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
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
NOT_OFFERED = {"ControllerPublishVolume", "ControllerUnpublishVolume", "ControllerModifyVolume"}


def rpcs(service: str) -> list[str]:
    return [m.name for m in pb.DESCRIPTOR.services_by_name[service].methods]


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_requests_get_spec_codes_only(driver: Driver, data: st.DataObject) -> None:
    d = driver
    if not d.kubelet.joinpath("seeded").exists():
        vol = d.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name="pvc-f",
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=400 * MiB),
            )
        ).volume
        d.controller.CreateSnapshot(pb.CreateSnapshotRequest(source_volume_id=vol.volume_id, name="snap-f"))
        d.kubelet.joinpath("seeded").touch()
    k = str(d.kubelet)
    pool = [
        "test/pvc-f", "test/snap-f", "test/nosuch", "pvc-f", "pvc-g", "snap-f",
        f"{k}/staging/f", f"{k}/pods/f/mount", f"{k}/pods/g/mount", f"{k}/staging/g", "/etc",
        "xfs", "ext4", "btrfs", "fsType", "pool", "test", "type", "shared", "local", "noatime", "ro",
        "topology.statehold.io/node", "node-a",
    ]  # fmt: skip
    service = data.draw(st.sampled_from(["Controller", "Node"]))
    method = data.draw(st.sampled_from(rpcs(service)))
    desc = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request = data.draw(messages(desc.input_type, desc.input_type._concrete_class, pool))
    stub = d.controller if service == "Controller" else d.node
    try:
        getattr(stub, method)(request, timeout=60)
        code = C.OK
    except grpc.RpcError as exc:
        code = exc.code()
        detail = exc.details()
    else:
        detail = ""
    allowed = SPEC_CODES | ({C.UNIMPLEMENTED} if method in NOT_OFFERED else set())
    assert code in allowed, f"{method}({request}) -> {code}: {detail}"
    assert d.identity.Probe(pb.ProbeRequest()).ready.value  # still alive
