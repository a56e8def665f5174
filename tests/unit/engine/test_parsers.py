"""Pure parsers of tool and kernel output, tested on captured text."""

from __future__ import annotations

from statehold.engine.fs import mount_options, parse_blkid_export
from statehold.engine.mounts import is_under, parse_mountinfo

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
101 22 7:0 / /var/tmp/h/pools/p rw,relatime shared:50 - xfs /dev/loop0 rw,attr2,inode64
102 22 7:1 / /var/tmp/with\\040space rw,relatime - ext4 /dev/loop1 rw
103 22 0:50 / /proc/x rw - proc proc rw
"""


def test_mountinfo_parses_targets_sources_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.target for m in mounts] == ["/", "/var/tmp/h/pools/p", "/var/tmp/with space",
                                          "/proc/x"]
    assert mounts[1].source == "/dev/loop0" and mounts[1].fstype == "xfs"
    assert mounts[2].source == "/dev/loop1"


def test_mountinfo_skips_garbage_lines() -> None:
    assert parse_mountinfo("nonsense\n\n1 2 3 - x\n") == []


def test_blkid_export_parse() -> None:
    out = "DEVNAME=/dev/loop3\nUUID=abc\nBLOCK_SIZE=4096\nTYPE=xfs\nUSAGE=filesystem\n"
    parsed = parse_blkid_export(out)
    assert parsed["TYPE"] == "xfs" and parsed["UUID"] == "abc"
    assert parse_blkid_export("PTUUID=1\nPTTYPE=gpt\n")["PTTYPE"] == "gpt"


def test_xfs_mounts_always_get_nouuid_so_clones_mount_beside_sources() -> None:
    assert mount_options("xfs", ["noatime"], False) == ["noatime", "nouuid"]
    assert mount_options("xfs", ["nouuid"], True) == ["nouuid", "ro"]
    assert mount_options("ext4", [], True) == ["ro"]
    assert mount_options("btrfs", ["", "compress=zstd"], False) == ["compress=zstd"]


def test_is_under_compares_whole_components() -> None:
    assert is_under("/a/b/c", "/a/b")
    assert is_under("/a/b", "/a/b/")
    assert not is_under("/a/bc", "/a/b")
