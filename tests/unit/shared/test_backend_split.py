"""The shared backend in the cluster set-up: a controller-only process that sees no shares,
and node plugins that may not know every root."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.csi.backend import AccessMode, BackendConfig, Capability, VolumeRequest
from statehold.csi.backend_shared import SharedBackend
from statehold.errors import NotFound, Unavailable

MiB = 1024 * 1024
CAP = Capability(mode=AccessMode.MULTI_NODE_MULTI_WRITER, block=False)


def _volume(scratch: Path) -> tuple[SharedBackend, Path, str]:
    share = scratch / "share"
    share.mkdir()
    node = SharedBackend(BackendConfig(home=scratch / "node-home", node_id="n1"))
    info = node.create_volume(VolumeRequest(
        name="pvc-a", required_bytes=4 * MiB, limit_bytes=0, capabilities=(CAP,),
        parameters={"type": "shared", "sharedRoot": str(share)}))
    return node, share, info.volume_id


def test_central_resizer_defers_and_the_node_raises_the_limit(scratch: Path) -> None:
    node, share, volume_id = _volume(scratch)
    central = SharedBackend(BackendConfig(home=scratch / "controller-home", node_id="ctl",
                                          expand_on_node=True))
    answer = central.expand_volume(volume_id, 16 * MiB, 0)
    assert answer.node_expansion_required and answer.capacity_bytes == 16 * MiB
    assert node.get_volume(volume_id).capacity_bytes == 4 * MiB  # nothing changed yet
    assert node.node_expand(volume_id, share / "pvc-a", 16 * MiB) == 16 * MiB
    assert node.get_volume(volume_id).capacity_bytes == 16 * MiB
    assert node.node_expand(volume_id, share / "pvc-a", 8 * MiB) == 16 * MiB  # never shrinks


def test_delete_where_the_root_is_unknown_is_retryable_and_keeps_the_directory(scratch: Path) -> None:
    node, share, volume_id = _volume(scratch)
    (share / "pvc-a" / "data").write_bytes(b"keep me")
    stranger = SharedBackend(BackendConfig(home=scratch / "other-home", node_id="n2"))
    with pytest.raises(Unavailable, match="not known on this host"):
        stranger.delete_volume(volume_id)
    assert (share / "pvc-a" / "data").read_bytes() == b"keep me"
    node.delete_volume(volume_id)  # the node that knows the root deletes it
    with pytest.raises(NotFound):  # and a retry there is the spec's "already gone"
        node.delete_volume(volume_id)


def test_an_all_in_one_process_still_reports_an_unknown_root_on_expand(scratch: Path) -> None:
    _node, _share, volume_id = _volume(scratch)
    lone = SharedBackend(BackendConfig(home=scratch / "lone-home", node_id="n3"))
    with pytest.raises(NotFound):
        lone.expand_volume(volume_id, 16 * MiB, 0)
