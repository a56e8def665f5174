"""Shared volumes backed up through the backup engine's file-tree mode and restored into
new volumes (plain-directory root, in-memory repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from statehold.backup.repository import Repository
from statehold.backup.store import MemoryStore
from statehold.errors import InvalidArgument, OutOfRange
from statehold.shared.backups import backup_volume, latest_tree_backup, restore_volume
from statehold.shared.root import SharedRoot
from statehold.shared.snapshots import SnapshotStore
from statehold.shared.types import SourceKind

MiB = 1 << 20


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStore(), "pw", chunk_size=1 * MiB)


@pytest.fixture
def root(scratch: Path) -> SharedRoot:
    (scratch / "share").mkdir()
    return SharedRoot(scratch / "share")


def fill(path: Path) -> dict[str, bytes]:
    files = {"a/b/photo.jpg": os.urandom(MiB + 5), "a/notes.txt": b"hello", "empty": b""}
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    os.chmod(path / "a" / "notes.txt", 0o600)
    return files


def test_backup_then_restore_into_a_new_volume(repo: Repository, root: SharedRoot) -> None:
    vol = root.create_volume("media", 8 * MiB)
    files = fill(vol.path)
    m = backup_volume(repo, root, "media", volume_key="shared/k/media")
    assert m.kind == "tree" and m.volume == "shared/k/media"
    assert SnapshotStore(root).list() == []  # the backup's snapshot is gone
    (vol.path / "a" / "notes.txt").write_bytes(b"changed after the backup")

    restored = restore_volume(repo, m.backup_id, root, "media-restored")
    assert restored.size == 8 * MiB  # the backed-up volume's size
    assert restored.source is not None and restored.source.kind == SourceKind.BACKUP
    for rel, data in files.items():
        assert (restored.path / rel).read_bytes() == data
    assert os.stat(restored.path / "a" / "notes.txt").st_mode & 0o777 == 0o600
    assert root.get_volume("media-restored") == restored
    assert restore_volume(repo, m.backup_id, root, "media-restored") == restored  # idempotent
    assert list((root.meta / "tmp").iterdir()) == []


def test_second_backup_has_the_first_as_parent_and_stores_little(repo: Repository, root: SharedRoot) -> None:
    vol = root.create_volume("media", 8 * MiB)
    fill(vol.path)
    first = backup_volume(repo, root, "media", volume_key="v", snapshot=False)
    (vol.path / "new.txt").write_bytes(b"one more file")
    second = backup_volume(repo, root, "media", volume_key="v")
    assert second.parent == first.backup_id
    assert latest_tree_backup(repo, "v") == second
    assert second.stats.stored_new < MiB  # the photo's chunks were already stored


def test_restore_smaller_than_the_data_creates_nothing(repo: Repository, root: SharedRoot) -> None:
    vol = root.create_volume("media", 8 * MiB)
    fill(vol.path)
    m = backup_volume(repo, root, "media", volume_key="v")
    with pytest.raises(OutOfRange):
        restore_volume(repo, m.backup_id, root, "tiny", size=MiB)
    assert sorted(p.name for p in root.path.iterdir()) == [".statehold", "media"]


def test_restore_of_an_image_backup_is_refused(repo: Repository, root: SharedRoot, scratch: Path) -> None:
    from statehold.backup.imagebackup import create_backup

    image = scratch / "disk.img"
    image.write_bytes(os.urandom(MiB))
    m = create_backup(repo, image, volume="pool/vol")
    with pytest.raises(InvalidArgument, match="not a file tree"):
        restore_volume(repo, m.backup_id, root, "x")
    assert sorted(p.name for p in root.path.iterdir()) == [".statehold"]


def test_service_backs_up_by_volume_id_and_restores_into_a_class(repo: Repository, scratch: Path) -> None:
    from statehold.shared.parameters import VolumeClass
    from statehold.shared.service import SharedVolumes

    share = scratch / "share2"
    share.mkdir()
    volumes = SharedVolumes(scratch / "home")
    cls = VolumeClass.from_parameters({"type": "shared", "sharedRoot": str(share)})
    rec = volumes.create_volume("pvc-1", 4 * MiB, cls)
    (share / "pvc-1" / "f").write_bytes(b"data")
    m = volumes.backup(rec.id, repo)
    assert m.volume == rec.id
    restored = volumes.restore(m.backup_id, repo, "pvc-2", cls)
    assert restored.volume.size == 4 * MiB and restored.id.startswith("shared/")
    assert restored.source_id == f"shared/{rec.key}/{m.backup_id}"
    assert (share / "pvc-2" / "f").read_bytes() == b"data"
