"""Race-free path handling (engine/safepath) and the descriptor mounts of engine/mounts, on
real directories and mounts under the test's scratch directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.engine import mounts, safepath
from statehold.errors import AlreadyExists, FailedPrecondition

pytestmark = [pytest.mark.root]


@pytest.fixture
def tree(scratch: Path) -> Iterator[tuple[Path, Path, list[Path]]]:
    """``(root, outside, mounts made)``; the mounts are released by exact path."""
    root, outside = scratch / "root", scratch / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("s")
    made: list[Path] = []
    try:
        yield root, outside, made
    finally:
        for path in reversed(made):
            while mounts.mount_at(path) is not None:
                if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                    break


def located(root: Path, rel: str) -> safepath.Located:
    return safepath.locate(root / rel, (root,))


def test_a_symlink_below_the_root_is_never_followed(tree: tuple[Path, Path, list[Path]]) -> None:
    root, outside, _ = tree
    (root / "a" / "out").symlink_to(outside)
    (root / "a" / "in").symlink_to("b")
    for rel in ("a/out/x", "a/in/x"):
        with pytest.raises(FailedPrecondition, match="symlink"):
            safepath.open_parent(located(root, rel), create=True)
    parent = safepath.open_parent(located(root, "a/out"))
    assert parent is not None
    with parent, pytest.raises(FailedPrecondition, match="symlink"):
        safepath.lookup(parent, "out")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_a_path_never_crosses_a_mount_but_may_end_on_one(tree: tuple[Path, Path, list[Path]]) -> None:
    root, outside, made = tree
    subprocess.run(["mount", "--bind", str(outside), str(root / "a" / "b")], check=True)
    made.append(root / "a" / "b")
    with pytest.raises(FailedPrecondition, match="mount point"):
        safepath.open_parent(located(root, "a/b/new"), create=True)
    with safepath.opened(located(root, "a/b")) as (parent, child):
        assert parent is not None and child is not None
        assert safepath.is_mountpoint(parent, child)
        entry = mounts.entry_of(child)
        assert entry is not None and entry.target == str(root / "a" / "b")
    assert not (outside / "new").exists()


def test_only_what_the_driver_created_is_removed(tree: tuple[Path, Path, list[Path]]) -> None:
    root, _, _ = tree
    parent = safepath.open_parent(located(root, "a/x"))
    assert parent is not None
    with parent:
        safepath.make_directory(parent, "mine", "vol-1").close()
        safepath.make_file(parent, "dev", "vol-1").close()
        (root / "a" / "theirs").write_text("t")
        (root / "a" / "empty").mkdir()
        assert not safepath.remove_created(parent, "mine", "vol-2")  # another volume's
        assert not safepath.remove_created(parent, "theirs", "vol-1")
        assert not safepath.remove_created(parent, "empty", "vol-1")
        assert safepath.remove_created(parent, "mine", "vol-1")
        assert safepath.remove_created(parent, "dev", "vol-1")
    assert sorted(p.name for p in (root / "a").iterdir()) == ["b", "empty", "theirs"]


def test_bind_at_is_read_only_from_the_start_and_unmount_at_takes_only_the_checked_mount(
    tree: tuple[Path, Path, list[Path]],
) -> None:
    root, outside, made = tree
    target = root / "a" / "b"
    made.append(target)
    with safepath.open_trusted(outside, directory=True) as source, \
            safepath.opened(located(root, "a/b")) as (parent, child):
        assert parent is not None and child is not None
        assert not mounts.bound_at(source, child, parent, readonly=True)
        mounts.bind_at(source, child, readonly=True)
    entry = mounts.mount_at(target)
    assert entry is not None and entry.readonly
    with pytest.raises(OSError):
        (target / "new").write_text("x")
    with safepath.open_trusted(outside, directory=True) as source, \
            safepath.opened(located(root, "a/b")) as (parent, child):
        assert parent is not None and child is not None
        assert mounts.bound_at(source, child, parent, readonly=True)
        with pytest.raises(AlreadyExists):
            mounts.bound_at(source, child, parent, readonly=False)
    busy = os.open(target / "secret", os.O_RDONLY)
    try:
        parent = safepath.open_parent(located(root, "a/b"))
        assert parent is not None
        with parent, pytest.raises(FailedPrecondition, match="busy"):
            mounts.unmount_at(parent, "b", entry)
    finally:
        os.close(busy)
    parent = safepath.open_parent(located(root, "a/b"))
    assert parent is not None
    with parent:
        mounts.unmount_at(parent, "b", entry)
    assert mounts.mount_at(target) is None and (outside / "secret").read_text() == "s"
