"""Fuzz the pure request decoders: any input gives a value or InvalidArgument/Aborted."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from statehold.csi import pagination, requests
from statehold.csi.gen import csi_pb2 as pb
from statehold.errors import Aborted, InvalidArgument
from tests.unit.csi.strategies import messages

PATHS = ["/var/lib/kubelet/pods/a/mount", "/var/lib/kubelet", "/etc", "/var/lib/kubelet/../x", "rel"]


@settings(max_examples=300, deadline=None)
@given(messages(pb.VolumeCapability.DESCRIPTOR, pb.VolumeCapability, ["xfs", "ext4", "btrfs", "zfs", "ro"]))
def test_capability_decoding_never_crashes(cap: pb.VolumeCapability) -> None:
    try:
        decoded = requests.capability(cap)
    except InvalidArgument:
        return
    assert decoded.block == (cap.WhichOneof("access_type") == "block")


@settings(max_examples=300, deadline=None)
@given(messages(pb.CreateVolumeRequest.DESCRIPTOR, pb.CreateVolumeRequest, ["pvc-1", "p/v", "xfs"]))
def test_create_request_decoding_never_crashes(req: pb.CreateVolumeRequest) -> None:
    try:
        requests.require(req.name, "name")
        requests.capabilities(req.volume_capabilities)
        requests.capacity_range(
            req.HasField("capacity_range"), req.capacity_range.required_bytes, req.capacity_range.limit_bytes
        )
        requests.content_source(req.volume_content_source, req.HasField("volume_content_source"))
        requests.segments(req.accessibility_requirements.requisite)
    except InvalidArgument:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(PATHS), st.text(max_size=40)))
def test_path_check_never_crashes(value: str) -> None:
    try:
        p = requests.path(value, "target_path", (Path("/var/lib/kubelet"),))
    except InvalidArgument:
        return
    assert p.is_relative_to("/var/lib/kubelet") and ".." not in p.parts


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_token_is_ours_or_aborted(token: str) -> None:
    with contextlib.suppress(Aborted):
        pagination.decode(token)
