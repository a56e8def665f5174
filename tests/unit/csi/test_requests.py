"""Request decoding and validation (pure): malformed input is InvalidArgument."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.csi import requests
from statehold.csi.backend import SINGLE_NODE_MODES, AccessMode, Capability
from statehold.csi.gen import csi_pb2 as pb
from statehold.errors import InvalidArgument

Mode = pb.VolumeCapability.AccessMode


def cap(kind: str = "mount", mode: int = Mode.SINGLE_NODE_WRITER, fs: str = "") -> pb.VolumeCapability:
    c = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    if kind == "mount":
        c.mount.fs_type = fs
    elif kind == "block":
        c.block.SetInParent()
    return c


class Local:
    kind = "local"
    access_modes = SINGLE_NODE_MODES
    supports_block = True


def test_capability_decodes_mount_and_block() -> None:
    assert requests.capability(cap("mount", fs="xfs")) == Capability(
        AccessMode.SINGLE_NODE_WRITER, False, "xfs"
    )
    assert requests.capability(cap("block", Mode.SINGLE_NODE_MULTI_WRITER)).block


@pytest.mark.parametrize(
    "bad",
    [
        cap("none"),
        cap("mount", Mode.UNKNOWN),
        pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume()),  # no access mode
        pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(mount_flags=["x" * 5000]),
            access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
        ),
        pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(mount_flags=[""]),
            access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
        ),
    ],
)
def test_malformed_capability_is_invalid_argument(bad: pb.VolumeCapability) -> None:
    with pytest.raises(InvalidArgument):
        requests.capability(bad)


def test_empty_capabilities_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        requests.capabilities([])


@pytest.mark.parametrize(
    "mode", [Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER, Mode.MULTI_NODE_MULTI_WRITER]
)
def test_multi_node_modes_are_unsupported_for_local_volumes(mode: int) -> None:
    why = requests.unsupported(Local(), [requests.capability(cap("mount", mode))])  # type: ignore[arg-type]
    assert "not supported" in why


@pytest.mark.parametrize(
    "mode",
    [
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_READER_ONLY,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
    ],
)
def test_single_node_modes_are_supported(mode: int) -> None:
    assert requests.unsupported(Local(), [requests.capability(cap("mount", mode))]) == ""  # type: ignore[arg-type]


def test_unknown_fs_and_conflicts_are_unsupported() -> None:
    local = Local()
    assert requests.unsupported(local, [requests.capability(cap(fs="zfs"))])  # type: ignore[arg-type]
    both = [requests.capability(cap("block")), requests.capability(cap("mount"))]
    assert requests.unsupported(local, both)  # type: ignore[arg-type]
    two_fs = [requests.capability(cap(fs="xfs")), requests.capability(cap(fs="ext4"))]
    assert requests.unsupported(local, two_fs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("req", "lim"), [(0, 0), (-1, 0), (0, -5), (10, 5)])
def test_bad_capacity_range_is_invalid_argument(req: int, lim: int) -> None:
    with pytest.raises(InvalidArgument):
        requests.capacity_range(True, req, lim)


def test_capacity_range_absent_or_one_sided() -> None:
    assert requests.capacity_range(False, 0, 0) == (0, 0)
    assert requests.capacity_range(True, 5, 0) == (5, 0)
    assert requests.capacity_range(True, 0, 7) == (0, 7)
    assert requests.capacity_range(True, 7, 7) == (7, 7)


ROOTS = (Path("/var/lib/kubelet"),)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "relative/path",
        "/etc/passwd",
        "/var/lib/kubelet",
        "/var/lib/kubelet/../../etc",
        "/var/lib/kubelet/pods/./x",
        "/var/lib/kubeletx/pods",
        "/var/lib/kubelet/pods/a\x00b",
    ],
)
def test_paths_outside_allowed_roots_are_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument):
        requests.path(value, "target_path", ROOTS)


def test_path_inside_root_is_accepted() -> None:
    assert requests.path("/var/lib/kubelet/pods/u/volumes/v/mount", "t", ROOTS) == Path(
        "/var/lib/kubelet/pods/u/volumes/v/mount"
    )


def test_required_field_rejects_control_characters() -> None:
    with pytest.raises(InvalidArgument):
        requests.require("pvc-\x07", "name")
    assert requests.require("pvc-ünïcode name", "name") == "pvc-ünïcode name"


def test_fs_parameter_reads_both_keys() -> None:
    assert requests.fs_parameter({"fsType": "ext4"}) == "ext4"
    assert requests.fs_parameter({"csi.storage.k8s.io/fstype": "btrfs"}) == "btrfs"
    assert requests.fs_parameter({}) == ""


def test_path_is_judged_on_its_text_alone(tmp_path: Path) -> None:
    """A symlink on the way is the node's state, not a malformed argument: the pure check
    lets the text through and the backend refuses the symlink when it opens the path
    (FAILED_PRECONDITION; tests/integration/csi/test_hostile_caller.py)."""
    root = tmp_path / "kubelet"
    (root / "pods").mkdir(parents=True)
    (root / "pods" / "escape").symlink_to("/etc")
    value = str(root / "pods" / "escape" / "x")
    assert requests.path(value, "target_path", (root,)) == Path(value)


def test_root_is_matched_as_named_and_by_its_real_path() -> None:
    named, real = Path("/var/lib/kubelet"), Path("/data/kubelet")
    for value in ("/var/lib/kubelet/pods/p/mount", "/data/kubelet/pods/p/mount"):
        assert requests.path(value, "target_path", ((named, real),)) == Path(value)
    with pytest.raises(InvalidArgument):
        requests.path("/var/lib/kubelet/pods/p/mount", "target_path", (real,))


@pytest.mark.parametrize(
    "value",
    [
        "/var/lib/kubelet/statehold",                 # the home itself
        "/var/lib/kubelet/statehold/pools/fast",      # inside it
        "/var/lib/kubelet/statehold/pools/fast/mnt",
        "/var/lib/kubelet/plugins",                   # above a protected path: would hide it
        "/data/kubelet/statehold/x",                  # through the root's real path
        "/srv/pools/dirpool/volumes",                 # a directory pool elsewhere
    ],
)
def test_paths_inside_or_above_protected_ones_are_invalid_argument(value: str) -> None:
    roots = ((Path("/var/lib/kubelet"), Path("/data/kubelet")), Path("/srv"))
    protected = (Path("/data/kubelet/statehold"), Path("/data/kubelet/plugins/csi/home"),
                 Path("/srv/pools/dirpool"))
    with pytest.raises(InvalidArgument):
        requests.path(value, "target_path", roots, protected)


def test_a_sibling_of_a_protected_path_is_fine() -> None:
    protected = (Path("/var/lib/kubelet/statehold"),)
    for value in ("/var/lib/kubelet/statehold-other/x", "/var/lib/kubelet/pods/p/mount"):
        assert requests.path(value, "target_path", (Path("/var/lib/kubelet"),), protected) == Path(value)


def test_tab_newline_and_return_are_allowed_other_controls_are_not() -> None:
    assert requests.require("a\tb\nc\rd", "name") == "a\tb\nc\rd"
    for c in ("\x00", "\x08", "\x0b", "\x0c", "\x0e", "\x1f", "\x7f", "\x9f"):
        with pytest.raises(InvalidArgument):
            requests.require(f"pvc{c}", "name")
