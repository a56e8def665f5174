"""mountinfo parsing (pure) and endpoint parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from statehold.csi.server import socket_path
from statehold.engine.mounts import mount_at, parse_mountinfo
from statehold.errors import InvalidArgument

SAMPLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
100 22 7:3 / /var/lib/kubelet/staging/pv\\0401 rw,relatime shared:50 - xfs /dev/loop3 rw,attr2
101 22 7:3 / /var/lib/kubelet/pods/u/mount ro,relatime shared:50 - xfs /dev/loop3 rw,attr2
102 22 0:5 /loop4 /var/lib/kubelet/pods/u/dev rw,nosuid master:2 - devtmpfs udev rw,size=100k
103 22 7:3 / /var/lib/kubelet/pods/u/mount rw,relatime - xfs /dev/loop3 rw
garbage line
"""


def test_parse_mountinfo_fields_and_escapes() -> None:
    entries = parse_mountinfo(SAMPLE)
    assert len(entries) == 5
    staged = entries[1]
    assert staged.target == "/var/lib/kubelet/staging/pv 1"
    assert staged.device == "7:3" and staged.source == "/dev/loop3" and staged.fstype == "xfs"
    assert entries[2].readonly and not staged.readonly
    assert entries[3].root == "/loop4" and entries[3].fstype == "devtmpfs"


def test_mount_at_returns_the_topmost_mount() -> None:
    entries = parse_mountinfo(SAMPLE)
    top = mount_at(Path("/var/lib/kubelet/pods/u/mount"), entries)
    assert top is not None and top.mount_id == 103
    assert mount_at(Path("/nowhere"), entries) is None


def test_endpoint_forms() -> None:
    assert socket_path("unix:///run/csi/csi.sock") == Path("/run/csi/csi.sock")
    assert socket_path("unix:/run/csi.sock") == Path("/run/csi.sock")
    for bad in ("tcp://127.0.0.1:1", "unix://relative.sock", "/run/csi.sock"):
        with pytest.raises(InvalidArgument):
            socket_path(bad)
