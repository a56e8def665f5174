"""A backup killed mid-upload leaves no visible backup; the next one reuses its chunks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from statehold.backup.collecting import gc
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image

from .helpers import MiB, same_bytes, write_image

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    from statehold.backup.imagebackup import create_backup
    stored = 0
    def fault(point):
        global stored
        if point == "chunk-stored":
            stored += 1
            if stored == 4:
                os.kill(os.getpid(), signal.SIGKILL)
    repo = Repository.open(DirectoryStore(Path(sys.argv[1])), "pw")
    create_backup(repo, Path(sys.argv[2]), volume="p/v", workers=2, fault=fault, commit_every=1)
""")


def test_killed_backup_is_invisible_and_the_next_reuses_its_chunks(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "repo")
    repo = Repository.init(store, "pw")
    img = write_image(tmp_path / "v.img", 16 * MiB,
                      [(i * MiB, bytes([i + 1]) * 1000 + bytes(MiB - 1000)) for i in range(16)])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "repo"), str(img)],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert repo.backup_ids() == []
    left = sum(1 for _ in store.list("chunks/"))
    assert 4 <= left < 16
    assert gc(repo, grace=3600).locks_removed == 1  # the dead writer's lock does not block gc
    m = create_backup(repo, img, volume="p/v")
    assert m.stats.chunks_new == 16 - left
    restore_image(repo, m.backup_id, tmp_path / "out.img")
    assert same_bytes(img, tmp_path / "out.img")
