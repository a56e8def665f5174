"""A process killed (SIGKILL) in the middle of a clone leaves a state the next call finishes:
the retried create succeeds with the right content, and nothing partial stays behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from statehold.shared.root import SharedRoot
from statehold.shared.types import Source, SourceKind, VolumeState

MiB = 1 << 20
CLONE = """
import sys
from pathlib import Path
from statehold.shared.root import SharedRoot
from statehold.shared.types import Source, SourceKind
SharedRoot(Path(sys.argv[1])).create_volume("clone", 1 << 30, source=Source(SourceKind.VOLUME, "src"))
"""


def test_clone_killed_mid_copy_is_finished_by_the_retry(scratch: Path) -> None:
    share = scratch / "share"
    share.mkdir()
    root = SharedRoot(share)
    src = root.create_volume("src", 1 << 30)
    for i in range(24):  # enough bytes that the copy is still running when we strike
        (src.path / f"f{i}").write_bytes(os.urandom(8 * MiB))
    # Its own session: SIGKILL to the group takes the cp child too, as a container crash would.
    proc = subprocess.Popen([sys.executable, "-c", CLONE, str(share)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list((root.meta / "tmp").glob("volume-clone@*")):
            assert proc.poll() is None, "the clone finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    sidecar = root.meta / "volumes" / "clone.json"
    assert sidecar.exists() and '"creating"' in sidecar.read_text()

    vol = root.create_volume("clone", 1 << 30, source=Source(SourceKind.VOLUME, "src"))
    assert vol.state == VolumeState.READY
    for i in range(24):
        assert (vol.path / f"f{i}").read_bytes() == (src.path / f"f{i}").read_bytes()
    assert list((root.meta / "tmp").iterdir()) == []
