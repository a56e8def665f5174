"""A shared root on a plain local directory (the host-based style; accounting, plain copies).

Runs unprivileged: no mounts, only directories and files under a scratch directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from statehold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from statehold.shared import metadata as md
from statehold.shared.root import SharedRoot
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import (
    CopyMethod,
    DeletionPolicy,
    QuotaKind,
    Source,
    SourceKind,
    VolumeEvent,
    VolumeState,
)

MiB = 1024 * 1024


@pytest.fixture
def root(scratch: Path) -> SharedRoot:
    (scratch / "share").mkdir()
    return SharedRoot(scratch / "share")


def entries(root: SharedRoot) -> set[str]:
    """Everything in the root except our metadata directory."""
    return {p.name for p in root.path.iterdir()} - {".statehold"}


def test_create_makes_a_directory_with_a_sidecar(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", 10 * MiB)
    assert vol.path == root.path / "pvc-a" and vol.path.is_dir()
    assert vol.quota == QuotaKind.ACCOUNTING and vol.state == VolumeState.READY
    data = json.loads((root.meta / "volumes" / "pvc-a.json").read_text())
    assert data["size"] == 10 * MiB and data["version"] == 1
    assert root.get_volume("pvc-a") == vol


def test_create_same_spec_returns_existing(root: SharedRoot) -> None:
    first = root.create_volume("pvc-a", 10 * MiB)
    (first.path / "keep").write_text("x")
    assert root.create_volume("pvc-a", 10 * MiB) == first
    assert (first.path / "keep").read_text() == "x"


def test_create_same_name_other_size_is_already_exists(root: SharedRoot) -> None:
    root.create_volume("pvc-a", 10 * MiB)
    with pytest.raises(AlreadyExists):
        root.create_volume("pvc-a", 20 * MiB)
    assert root.get_volume("pvc-a").size == 10 * MiB


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", "UP"])
def test_traversal_names_create_nothing(root: SharedRoot, name: str) -> None:
    with pytest.raises(InvalidArgument):
        root.create_volume(name, MiB)
    assert entries(root) == set()
    assert not (root.path.parent / "escape").exists()
    assert list((root.meta / "volumes").iterdir()) == []


def test_missing_root_is_failed_precondition(scratch: Path) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        SharedRoot(scratch / "not-mounted")
    assert not (scratch / "not-mounted").exists()


def test_relative_root_is_invalid(scratch: Path) -> None:
    with pytest.raises(InvalidArgument):
        SharedRoot(Path("relative"))


def test_enforcement_demanded_without_quota_creates_nothing(root: SharedRoot) -> None:
    with pytest.raises(FailedPrecondition, match="quota"):
        root.create_volume("pvc-a", MiB, enforce=True)
    assert entries(root) == set()
    with pytest.raises(NotFound):
        root.get_volume("pvc-a")


def test_foreign_directory_is_not_adopted(root: SharedRoot) -> None:
    (root.path / "someones-data").mkdir()
    (root.path / "someones-data" / "f").write_text("precious")
    with pytest.raises(FailedPrecondition, match="not a Statehold volume"):
        root.create_volume("someones-data", MiB)
    assert (root.path / "someones-data" / "f").read_text() == "precious"
    assert not (root.meta / "volumes" / "someones-data.json").exists()


def test_delete_policy_removes_data_and_is_idempotent(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", MiB)
    (vol.path / "f").write_bytes(b"x" * 100)
    assert root.delete_volume("pvc-a") is None
    assert not vol.path.exists()
    assert root.delete_volume("pvc-a") is None
    with pytest.raises(NotFound):
        root.get_volume("pvc-a")


def test_retain_policy_keeps_data_and_holds_the_name(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", MiB, policy=DeletionPolicy.RETAIN)
    (vol.path / "f").write_bytes(b"kept")
    assert root.delete_volume("pvc-a") == vol.path
    assert (vol.path / "f").read_bytes() == b"kept"
    assert root.list_volumes() == []
    with pytest.raises(AlreadyExists, match="retained"):
        root.create_volume("pvc-a", MiB)
    assert root.delete_volume("pvc-a") == vol.path  # again: still kept


def test_archive_policy_renames_with_timestamp(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", MiB, policy=DeletionPolicy.ARCHIVE)
    (vol.path / "f").write_bytes(b"archived")
    dest = root.delete_volume("pvc-a")
    assert dest is not None and dest.parent == root.meta / "archive"
    assert dest.name.startswith("pvc-a-20") and dest.name.endswith("Z")
    assert (dest / "f").read_bytes() == b"archived"
    assert not vol.path.exists()
    root.create_volume("pvc-a", MiB)  # the name is free again
    assert list((root.path / "pvc-a").iterdir()) == []


def test_expand_raises_limit_and_refuses_shrink(root: SharedRoot) -> None:
    root.create_volume("pvc-a", MiB)
    assert root.expand_volume("pvc-a", 2 * MiB).size == 2 * MiB
    assert root.expand_volume("pvc-a", 2 * MiB).size == 2 * MiB
    with pytest.raises(OutOfRange):
        root.expand_volume("pvc-a", MiB)
    with pytest.raises(NotFound):
        root.expand_volume("pvc-b", MiB)


def test_over_size_volume_is_abnormal_and_fires_an_event(scratch: Path) -> None:
    (scratch / "share").mkdir()
    events: list[VolumeEvent] = []
    root = SharedRoot(scratch / "share", on_event=events.append)
    vol = root.create_volume("pvc-a", MiB)
    (vol.path / "small").write_bytes(os.urandom(64 * 1024))
    usage = root.usage("pvc-a")
    assert not usage.abnormal and 64 * 1024 <= usage.used < MiB and events == []
    (vol.path / "big").write_bytes(os.urandom(2 * MiB))
    usage = root.usage("pvc-a")
    assert usage.abnormal and usage.used > MiB and usage.available == 0
    assert [e.reason for e in events] == ["OverSize"] and events[0].volume == "pvc-a"
    assert [e.volume for e in root.check_all()] == ["pvc-a"]
    root.expand_volume("pvc-a", 4 * MiB)
    assert not root.usage("pvc-a").abnormal


def test_snapshot_and_clone_keep_bytes_and_modes(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", MiB)
    (vol.path / "d").mkdir()
    (vol.path / "d" / "f").write_bytes(b"v1")
    os.chmod(vol.path / "d" / "f", 0o640)
    os.symlink("d/f", vol.path / "link")
    store = SnapshotStore(root)
    snap = store.create("pvc-a", "snap-1")
    assert snap.copy_method in (CopyMethod.COPY, CopyMethod.REFLINK)
    assert store.create("pvc-a", "snap-1") == snap
    (vol.path / "d" / "f").write_bytes(b"v2")
    assert (snap.path / "d" / "f").read_bytes() == b"v1"
    clone = root.create_volume("pvc-b", 2 * MiB, source=Source(SourceKind.SNAPSHOT, "snap-1"))
    assert (clone.path / "d" / "f").read_bytes() == b"v1"
    assert os.stat(clone.path / "d" / "f").st_mode & 0o777 == 0o640
    assert os.readlink(clone.path / "link") == "d/f"
    (clone.path / "d" / "f").write_bytes(b"clone")
    assert (snap.path / "d" / "f").read_bytes() == b"v1"
    from_vol = root.create_volume("pvc-c", MiB, source=Source(SourceKind.VOLUME, "pvc-a"))
    assert (from_vol.path / "d" / "f").read_bytes() == b"v2"
    assert [s.name for s in store.list("pvc-a")] == ["snap-1"]
    root.delete_volume("pvc-a")
    assert store.get("snap-1").path.exists()  # snapshots survive their volume
    store.delete("snap-1")
    store.delete("snap-1")
    assert not snap.path.exists()


def test_snapshot_name_of_other_volume_is_already_exists(root: SharedRoot) -> None:
    root.create_volume("pvc-a", MiB)
    root.create_volume("pvc-b", MiB)
    SnapshotStore(root).create("pvc-a", "s")
    with pytest.raises(AlreadyExists):
        SnapshotStore(root).create("pvc-b", "s")


def test_clone_errors_leave_nothing(root: SharedRoot) -> None:
    root.create_volume("pvc-a", 2 * MiB)
    with pytest.raises(OutOfRange):
        root.create_volume("pvc-b", MiB, source=Source(SourceKind.VOLUME, "pvc-a"))
    with pytest.raises(NotFound):
        root.create_volume("pvc-c", MiB, source=Source(SourceKind.SNAPSHOT, "nope"))
    assert entries(root) == {"pvc-a"}
    assert sorted(p.name for p in (root.meta / "volumes").iterdir()) == ["pvc-a.json"]


def test_interrupted_create_is_undone_by_reconcile(root: SharedRoot) -> None:
    vol = root.create_volume("pvc-a", MiB)
    # What a crash between "record intent" and "ready" leaves behind:
    from dataclasses import replace
    md.write_json(root.meta / "volumes" / "pvc-x.json",
                  md.volume_to_json(replace(vol, name="pvc-x", path=root.path / "pvc-x",
                                            state=VolumeState.CREATING)))
    (root.path / "pvc-x").mkdir()
    (root.meta / "tmp" / "volume-pvc-y").mkdir()
    with pytest.raises(NotFound):
        root.get_volume("pvc-x")
    actions = root.reconcile()
    assert len(actions) == 2
    assert entries(root) == {"pvc-a"}
    assert list((root.meta / "tmp").iterdir()) == []
    assert root.create_volume("pvc-x", MiB).state == VolumeState.READY


def test_interrupted_delete_is_finished_by_the_next_create(root: SharedRoot) -> None:
    from dataclasses import replace
    vol = root.create_volume("pvc-a", MiB)
    md.write_json(root.meta / "volumes" / "pvc-a.json",
                  md.volume_to_json(replace(vol, state=VolumeState.DELETING)))
    (vol.path / "old").write_text("old")
    fresh = root.create_volume("pvc-a", MiB)
    assert list(fresh.path.iterdir()) == []
