"""The mount toolkit without root: lookups on captured mountinfo, and the error rule with the
runner replaced (what a bind that fails halfway leaves behind)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from statehold.engine import mounts
from statehold.errors import CommandError, FailedPrecondition

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
101 22 7:0 / /var/tmp/h/pools/p rw,relatime shared:50 - xfs /dev/loop0 rw,attr2
102 101 7:0 / /var/tmp/h/pools/p ro,relatime - xfs /dev/loop0 rw,attr2
103 22 0:50 /pvc-1 /var/lib/kubelet/pods/x/v rw - fuse.glusterfs 127.0.0.2:/gv0 rw
"""


def test_mount_at_is_the_topmost_and_ignores_a_trailing_slash() -> None:
    entries = mounts.parse_mountinfo(MOUNTINFO)
    top = mounts.mount_at("/var/tmp/h/pools/p/", entries)
    assert top is not None and top.mount_id == 102 and top.readonly
    assert mounts.mount_at(Path("/var/tmp/h/pools"), entries) is None


def test_mount_of_is_the_longest_prefix() -> None:
    entries = mounts.parse_mountinfo(MOUNTINFO)
    assert mounts.mount_of("/var/tmp/h/pools/p/volumes/a.img", entries).mount_id == 102  # type: ignore[union-attr]
    assert mounts.mount_of("/var/tmp/h/pools/px", entries).target == "/"  # type: ignore[union-attr]
    assert mounts.mount_of("/var/lib/kubelet/pods/x/v", entries).root == "/pvc-1"  # type: ignore[union-attr]


class Runner:
    """Stands in for ``statehold.runner.run``: records argv, fails the commands it is told to."""

    def __init__(self, fail: str) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **_: Any) -> None:
        self.calls.append(list(argv))
        if self.fail in " ".join(argv):
            raise CommandError(argv, 32, "mount: permission denied (the tool's own words)")


def test_a_failed_bind_is_failed_precondition_and_removes_the_target_it_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Runner(fail="--bind")
    monkeypatch.setattr(mounts, "run", runner)
    target = tmp_path / "pods" / "u" / "target"
    with pytest.raises(FailedPrecondition, match="the tool's own words"):
        mounts.bind(tmp_path, target)
    assert not target.exists() and (tmp_path / "pods" / "u").is_dir()


def test_a_failed_readonly_remount_undoes_the_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Runner(fail="remount,bind,ro")
    monkeypatch.setattr(mounts, "run", runner)
    target = tmp_path / "target"
    target.touch()
    with pytest.raises(FailedPrecondition, match=r"read-only remount .*the tool's own words"):
        mounts.bind("/dev/null", target, readonly=True)
    assert [c[:2] for c in runner.calls] == [["mount", "--bind"], ["mount", "-o"], ["umount", str(target)]]
    assert target.exists()  # it was there before: not ours to remove
