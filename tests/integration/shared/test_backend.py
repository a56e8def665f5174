"""The CSI SharedBackend below gRPC: bad requests and ids, and a native GlusterFS share
staged on two "nodes" at once (separate homes, separate mounts). The host-based lifecycle
(create, stage, publish, stats, expand, snapshot, clone, delete) runs over every shared
filesystem in test_contract.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from statehold.csi.backend import (
    AccessMode,
    BackendConfig,
    Capability,
    ContentSource,
    PublishRequest,
    StageRequest,
    VolumeRequest,
)
from statehold.csi.backend_shared import SharedBackend
from statehold.engine.mounts import mount_at
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from statehold.shared.share import ShareMounter, ShareSpec
from statehold.shared.types import VolumeEvent
from tests.fixtures.gluster import GlusterServer

pytestmark = pytest.mark.root
MiB = 1024 * 1024
RWX = Capability(mode=AccessMode.MULTI_NODE_MULTI_WRITER, block=False)
ROX = Capability(mode=AccessMode.MULTI_NODE_READER_ONLY, block=False)
RWO = Capability(mode=AccessMode.SINGLE_NODE_WRITER, block=False)
BLOCK = Capability(mode=AccessMode.SINGLE_NODE_WRITER, block=True)


def backend(home: Path, node: str, events: list[VolumeEvent] | None = None) -> SharedBackend:
    # the test's node paths (scratch/pod*/...) lie beside the home: that is the allowed root
    return SharedBackend(BackendConfig(home=home, node_id=node, allowed_roots=(home.parent,)),
                         on_event=events.append if events is not None else None)


def request(name: str, params: dict[str, str], size: int = 4 * MiB, cap: Capability = RWX,
            source: ContentSource | None = None) -> VolumeRequest:
    return VolumeRequest(name=name, required_bytes=size, limit_bytes=0, capabilities=(cap,),
                         parameters={"type": "shared", **params}, source=source)


def stage_and_publish(be: SharedBackend, vid: str, ctx: dict[str, str], base: Path, mounts: list[Path],
                      cap: Capability = RWX, readonly: bool = False) -> Path:
    staging, target = base / "staging", base / "target"
    mounts += [staging, target]
    be.node_stage(StageRequest(volume_id=vid, staging_path=staging, capability=cap, context=ctx))
    be.node_publish(PublishRequest(volume_id=vid, target_path=target, staging_path=staging,
                                   capability=cap, readonly=readonly, context=ctx))
    return target


@pytest.mark.parametrize(
    ("params", "cap", "error"),
    [
        ({"sharedRoot": "/nonexistent/statehold-share"}, RWX, FailedPrecondition),
        ({"sharedRoot": "SHARE", "deletionPolicy": "shred"}, RWX, InvalidArgument),
        ({"sharedRoot": "SHARE", "enforceQuota": "maybe"}, RWX, InvalidArgument),
        ({"sharedRoot": "SHARE", "enforceQuota": "true"}, RWX, FailedPrecondition),
        ({"sharedRoot": "SHARE"}, BLOCK, InvalidArgument),
        ({"sharedRoot": "relative"}, RWX, InvalidArgument),
        ({}, RWX, InvalidArgument),
    ],
)
def test_bad_requests_create_nothing(scratch: Path, params: dict[str, str], cap: Capability,
                                     error: type[Exception]) -> None:
    share = scratch / "share"
    share.mkdir()
    params = {k: (str(share) if v == "SHARE" else v) for k, v in params.items()}
    be = backend(scratch / "home", "n1")
    with pytest.raises(error):
        be.create_volume(request("pvc-1", params, cap=cap))
    assert [p.name for p in share.iterdir() if p.name != ".statehold"] == []
    assert be.list_volumes() == []


def test_bad_ids(scratch: Path) -> None:
    be = backend(scratch / "home", "n1")
    for bad in ("shared/x", "shared/abc/../x", "pool/vol", "shared//x"):
        with pytest.raises(InvalidArgument):
            be.get_volume(bad)
    with pytest.raises(NotFound):
        be.get_volume("shared/0123456789abcdef/pvc-1")


def test_native_gluster_volume_staged_on_two_nodes(scratch: Path, gluster_server: GlusterServer,
                                                    mounts: list[Path]) -> None:
    opts = ",".join(gluster_server.mount_options("csi"))
    params = {"source": gluster_server.source, "fsType": "glusterfs", "mountOptions": opts,
              "deletionPolicy": "delete"}
    spec = ShareSpec.parse(gluster_server.source, "glusterfs", opts)
    homes = {n: scratch / n for n in ("controller", "node-a", "node-b")}
    for home in homes.values():
        mounts.append(ShareMounter(home / "shared").target(spec))
    controller = backend(homes["controller"], "controller")
    name = f"pvc-{scratch.name[-8:].lower().replace('_', '0')}"
    info = controller.create_volume(request(name, params))
    ctx = dict(info.context)

    node_a, node_b = backend(homes["node-a"], "a"), backend(homes["node-b"], "b")
    ta = stage_and_publish(node_a, info.volume_id, ctx, scratch / "a-pod", mounts)
    tb = stage_and_publish(node_b, info.volume_id, ctx, scratch / "b-pod", mounts, cap=RWO)
    payload = os.urandom(256 * 1024)
    (ta / "from-a").write_bytes(payload)
    (tb / "from-b").write_bytes(b"b")
    assert (tb / "from-a").read_bytes() == payload
    assert (ta / "from-b").read_bytes() == b"b"
    assert node_b.node_stats(info.volume_id, tb).bytes_used >= len(payload)

    controller.expand_volume(info.volume_id, 8 * MiB, 0)
    assert node_a.node_stats(info.volume_id, ta).bytes_total == 8 * MiB

    for be, pod in ((node_a, "a-pod"), (node_b, "b-pod")):
        be.node_unpublish(info.volume_id, scratch / pod / "target")
        be.node_unstage(info.volume_id, scratch / pod / "staging")
    for n in ("node-a", "node-b"):  # the last volume gone: the node's share mount is gone
        assert mount_at(ShareMounter(homes[n] / "shared").target(spec)) is None
    controller.delete_volume(info.volume_id)
    with pytest.raises(NotFound):
        controller.get_volume(info.volume_id)


def test_native_unreachable_share_is_unavailable(scratch: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.9", 0))
        port = sock.getsockname()[1]
    be = backend(scratch / "home", "n1")
    params = {"source": "127.0.0.9:/vol", "fsType": "glusterfs",
              "mountOptions": f"volfile-server-port={port}"}
    with pytest.raises(Unavailable):
        be.create_volume(request("pvc-1", params))
    assert not (scratch / "home" / "shared" / "roots").exists()
    assert list((scratch / "home" / "shared" / "shares").glob("*")) == [
        scratch / "home" / "shared" / "shares" / ".statehold"]
