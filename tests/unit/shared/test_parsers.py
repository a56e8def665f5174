"""Pure parsers of tool output and of StorageClass parameters, on captured text."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.engine.mounts import mount_at, mount_of, parse_mountinfo
from statehold.errors import InvalidArgument
from statehold.shared.btrfs_qgroup import parse_qgroup_show
from statehold.shared.quota import Accounting, detect
from statehold.shared.registry import HOST, NATIVE, RootSpec
from statehold.shared.share import ShareSpec
from statehold.shared.xfs_project import XfsProject, limit_argv, parse_report, project_argv

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 22 7:3 / /mnt/xfsq rw,relatime shared:20 - xfs /dev/loop3 rw,attr2,inode64,prjquota
41 22 7:4 / /mnt/xfs rw,relatime - xfs /dev/loop4 rw,attr2,inode64,noquota
42 22 0:50 / /mnt/gluster\\040share rw,relatime - fuse.glusterfs 127.0.0.2:/gv0 rw,user_id=0
43 22 7:5 / /mnt/bt rw,relatime - btrfs /dev/loop5 rw,space_cache=v2,subvolid=5,subvol=/
44 42 0:50 /pvc-1 /var/lib/kubelet/pods/x/volumes/v rw,relatime - fuse.glusterfs 127.0.0.2:/gv0 rw
45 41 0:50 /pvc-1 /mnt/xfs ro,relatime - xfs /dev/loop4 rw
garbage line
"""


def test_mountinfo_parses_fields_and_escapes() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 7
    gl = mount_at("/mnt/gluster share", entries)
    assert gl is not None and gl.fstype == "fuse.glusterfs" and gl.source == "127.0.0.2:/gv0"
    bind = mount_at("/var/lib/kubelet/pods/x/volumes/v", entries)
    assert bind is not None and bind.root == "/pvc-1"


def test_mount_of_picks_longest_prefix_and_top_of_stack() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert mount_of("/mnt/xfsq/vol/a", entries).target == "/mnt/xfsq"  # type: ignore[union-attr]
    assert mount_of("/mnt/xfsqq", entries).target == "/"  # type: ignore[union-attr]
    top = mount_at("/mnt/xfs", entries)
    assert top is not None and top.mount_id == 45  # the later (stacked) mount wins


def test_detect_picks_xfs_project_only_with_prjquota() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert isinstance(detect(Path("/mnt/xfsq"), entries), XfsProject)
    assert type(detect(Path("/mnt/xfs"), entries)) is Accounting
    assert type(detect(Path("/mnt/gluster share/x"), entries)) is Accounting


def test_xfs_quota_argv_and_report() -> None:
    assert project_argv(Path("/m"), Path("/m/v"), 100001) == \
        ["xfs_quota", "-x", "-c", "project -s -p /m/v 100001", "/m"]
    assert limit_argv(Path("/m"), 100001, 10 * 1024**2)[3] == "limit -p bhard=10240k 100001"
    assert limit_argv(Path("/m"), 7, 1)[3] == "limit -p bhard=1k 7"
    report = "#0            0     0     0  00 [--------]\n#100001   10240     0 20480  00 [--------]\n\n"
    assert parse_report(report) == {0: (0, 0), 100001: (10240 * 1024, 20480 * 1024)}


def test_btrfs_qgroup_show_is_parsed() -> None:
    text = (
        "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n"
        "--------    ----------    ---------  --------------  -------------   ---- \n"
        "0/5              16384        16384            none           none   <toplevel>\n"
        "0/256         10469376     10469376        10485760           none   v1\n"
        "1/100            1000         1000            none           none   <0 member>\n"
    )
    assert parse_qgroup_show(text) == {5: 16384, 256: 10469376}


def test_share_spec_parses_and_probes_right_ports() -> None:
    spec = ShareSpec.parse("127.0.0.2:/gv0", "glusterfs", "log-level=WARNING, volfile-server-port=24010")
    assert spec.options == ("log-level=WARNING", "volfile-server-port=24010")
    assert spec.servers() == [("127.0.0.2", 24010)]
    ceph = ShareSpec.parse("a,b:/x", "cephfs")
    assert ceph.servers() == [("a", 3300), ("a", 6789), ("b", 3300), ("b", 6789)]
    assert ShareSpec.parse("mon:6789:/", "cephfs").servers() == [("mon", 6789)]
    assert ShareSpec.parse("nfs1:/export", "nfs").servers() == [("nfs1", 2049)]
    assert ShareSpec.parse("h:/v", "glusterfs", "a,b").key == ShareSpec.parse("h:/v", "glusterfs", "b,a").key


@pytest.mark.parametrize(
    ("source", "fstype", "options", "match"),
    [
        ("nocolon", "glusterfs", "", "server:/path"),
        ("h:/v", "ext4", "", "fsType"),
        ("h:/v", "glusterfs", "bind", "not allowed"),
        ("h:/v", "glusterfs", "remount", "not allowed"),
        ("h:/v", "glusterfs", "a;rm -rf", "characters"),
        ("h :/v", "nfs", "", "server:/path"),
    ],
)
def test_share_spec_rejects_bad_parameters(source: str, fstype: str, options: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ShareSpec.parse(source, fstype, options)


def test_root_spec_from_parameters() -> None:
    host = RootSpec.from_parameters({"sharedRoot": "/mnt/share"})
    assert host.style == HOST and host.path == Path("/mnt/share")
    native = RootSpec.from_parameters({"server": "10.0.0.5", "share": "gv0", "fsType": "glusterfs"})
    assert native.style == NATIVE and native.share is not None and native.share.source == "10.0.0.5:/gv0"
    again = RootSpec.from_parameters(native.to_context())
    assert again.key == native.key and again.key != host.key


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, "sharedRoot"),
        ({"sharedRoot": "relative/dir"}, "absolute"),
        ({"sharedRoot": "/mnt/../etc"}, "absolute"),
        ({"sharedRoot": "/mnt", "source": "h:/v", "fsType": "nfs"}, "not both"),
        ({"source": "h:/v"}, "fsType"),
    ],
)
def test_root_spec_rejects_bad_parameters(params: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        RootSpec.from_parameters(params)
