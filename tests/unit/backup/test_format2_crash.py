"""Format 2: a backup killed (SIGKILL) at any step leaves every earlier backup restorable
and no visible backup of its own; the next run completes and reuses what was indexed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.verifying import verify

from .helpers import MiB, same_bytes, write_image
from .killing import kill_at

CHILD = """
    from statehold.backup.imagebackup import create_backup
    create_backup(repo, Path(args[0]), volume="p/v", workers=2, fault=fault, commit_every=1,
                  uploads=2)
"""


def _image(path: Path, seed: int) -> Path:
    rnd = random.Random(seed)
    return write_image(path, 12 * MiB, [(i * MiB, rnd.randbytes(MiB)) for i in range(12)])


@pytest.mark.parametrize(("point", "nth"), [("chunk-stored", 3), ("pack-stored", 1), ("pack-stored", 4),
                                            ("index-stored", 1), ("index-stored", 5),
                                            ("before-manifest", 1)])
def test_a_killed_backup_loses_nothing_and_the_rerun_completes(tmp_path: Path, point: str, nth: int) -> None:
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw", version=2, pack_size=MiB)
    earlier_img = _image(tmp_path / "earlier.img", 1)
    earlier = create_backup(repo, earlier_img, volume="p/v")
    img = _image(tmp_path / "v.img", 2)
    kill_at(point, nth, tmp_path / "repo", CHILD, str(img))
    assert repo.backup_ids() == [earlier.backup_id]  # the killed one is not visible
    restore_image(repo, earlier.backup_id, tmp_path / "earlier.out")
    assert same_bytes(earlier_img, tmp_path / "earlier.out")
    fresh = Repository.open(store, "pw")
    chunkstore.use_cache(fresh, tmp_path / "fresh-cache")  # sees only what the repository holds
    m = create_backup(fresh, img, volume="p/v")
    if point in ("index-stored", "before-manifest"):
        assert m.stats.chunks_new < len(m)  # what was indexed before the kill is reused
    restore_image(fresh, m.backup_id, tmp_path / "v.out")
    assert same_bytes(img, tmp_path / "v.out")
    report = verify(fresh, deep=True)
    assert report.ok and report.backups == 2
