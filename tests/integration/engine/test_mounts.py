"""The mount toolkit on real mounts (a tmpfs and binds of temp directories, as root).

Every test mounts only under its own scratch directory and unmounts exactly those targets in
``finally``, whatever happened.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import mounts
from statehold.errors import AlreadyExists, CommandError, FailedPrecondition

pytestmark = pytest.mark.root


@pytest.fixture
def made(scratch: Path) -> Iterator[list[Path]]:
    """Targets the test mounts on; each is unmounted (every stacked layer) afterwards."""
    targets: list[Path] = []
    try:
        yield targets
    finally:
        for target in reversed(targets):
            for _ in range(mounts.MAX_STACK):
                if mounts.mount_at(target) is None:
                    break
                subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _stack(target: Path) -> list[mounts.Mount]:
    return [m for m in mounts.mounts() if m.target == str(target)]


def _tmpfs(target: Path, made: list[Path]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    made.append(target)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(target)], check=True)


def test_binding_the_same_source_again_is_a_no_op(scratch: Path, made: list[Path]) -> None:
    src, target = scratch / "src", scratch / "pod" / "target"
    src.mkdir()
    (src / "data").write_text("x")
    made.append(target)
    mounts.bind(src, target)
    mounts.bind(src, target)
    assert len(_stack(target)) == 1
    assert mounts.bound(src, target, readonly=False)
    assert (target / "data").read_text() == "x"


def test_binding_another_source_over_a_mount_is_already_exists(scratch: Path, made: list[Path]) -> None:
    first, second, target = scratch / "a", scratch / "b", scratch / "target"
    first.mkdir()
    second.mkdir()
    made.append(target)
    mounts.bind(first, target)
    with pytest.raises(AlreadyExists, match="already holds another mount"):
        mounts.bind(second, target)
    assert len(_stack(target)) == 1 and mounts.bound(first, target, readonly=False)


def test_same_source_with_the_other_readonly_flag_is_already_exists(
        scratch: Path, made: list[Path]) -> None:
    src, target = scratch / "src", scratch / "target"
    src.mkdir()
    made.append(target)
    mounts.bind(src, target)
    with pytest.raises(AlreadyExists, match="readonly=False"):
        mounts.bind(src, target, readonly=True)
    entry = mounts.mount_at(target)
    assert entry is not None and not entry.readonly  # left as it was, not remounted


def test_readonly_bind_refuses_writes_and_the_source_stays_writable(
        scratch: Path, made: list[Path]) -> None:
    src, target = scratch / "src", scratch / "target"
    _tmpfs(src, made)
    made.append(target)
    mounts.bind(src, target, readonly=True)
    mounts.bind(src, target, readonly=True)
    entry = mounts.mount_at(target)
    assert entry is not None and entry.readonly and len(_stack(target)) == 1
    with pytest.raises(OSError) as info:
        (target / "f").write_text("no")
    assert info.value.errno == errno.EROFS
    (src / "f").write_text("yes")
    assert (target / "f").read_text() == "yes"


def test_a_file_source_gets_a_file_target_and_binds_like_a_device_node(
        scratch: Path, made: list[Path]) -> None:
    target = scratch / "pod" / "dev"
    made.append(target)
    mounts.bind("/dev/null", target)
    assert target.is_file() or target.is_char_device()
    assert mounts.bound("/dev/null", target, readonly=False)
    mounts.bind("/dev/null", target)
    assert len(_stack(target)) == 1


def test_a_refused_bind_is_failed_precondition_with_mounts_words(scratch: Path) -> None:
    src, target = scratch / "src", scratch / "file"
    src.mkdir()
    target.write_text("a file is no mount point for a directory")
    with pytest.raises(FailedPrecondition, match=r"bind mount of .* failed: ") as info:
        mounts.bind(src, target)
    assert not isinstance(info.value, CommandError) and isinstance(info.value.__cause__, CommandError)
    assert target.read_text().startswith("a file")  # not ours: left as it was
    assert mounts.mount_at(target) is None


def test_a_missing_source_is_failed_precondition_and_creates_nothing(scratch: Path) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        mounts.bind(scratch / "nowhere", scratch / "target")
    assert not (scratch / "target").exists()


def test_unmounting_what_is_not_mounted_is_a_no_op(scratch: Path) -> None:
    (scratch / "plain").mkdir()
    mounts.unmount(scratch / "plain")
    mounts.unmount(scratch / "missing", remove_dir=True)
    assert (scratch / "plain").is_dir()


def test_unmount_peels_every_stacked_mount_and_removes_an_empty_dir(
        scratch: Path, made: list[Path]) -> None:
    src, target = scratch / "src", scratch / "target"
    src.mkdir()
    _tmpfs(target, made)
    subprocess.run(["mount", "--bind", str(src), str(target)], check=True)  # a crash's leftover
    assert len(_stack(target)) == 2
    mounts.unmount(target, remove_dir=True)
    assert _stack(target) == [] and not target.exists()


def test_unmount_keeps_a_directory_with_files(scratch: Path, made: list[Path]) -> None:
    src, target = scratch / "src", scratch / "target"
    src.mkdir()
    made.append(target)
    mounts.bind(src, target)
    mounts.unmount(target)
    (target / "left").write_text("x")
    mounts.unmount(target, remove_dir=True)
    assert (target / "left").exists()


def test_a_busy_target_is_failed_precondition_with_umounts_words(scratch: Path, made: list[Path]) -> None:
    target = scratch / "busy"
    _tmpfs(target, made)
    with open(target / "open", "w") as held:
        held.write("held open")
        with pytest.raises(FailedPrecondition, match="cannot unmount") as info:
            mounts.unmount(target)
    assert "busy" in str(info.value)
    assert mounts.mount_at(target) is not None
