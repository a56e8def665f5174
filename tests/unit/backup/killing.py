"""A repository operation run in a child process that SIGKILLs itself at a fault point.

Backup, migration and index rebuild take a ``fault`` hook called at named points; the
crash tests kill a child at the ``nth`` call of one point and then check what a fresh
process finds in the repository. The child's frame (the fault hook, the opened
repository) is the same for all of them; each test passes only the call it makes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

_FRAME = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from statehold.backup.dirstore import DirectoryStore
    from statehold.backup.repository import Repository
    point, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
    seen = 0
    def fault(p):
        global seen
        if p == point:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    repo = Repository.open(DirectoryStore(Path(sys.argv[3])), "pw")
""")


def kill_at(point: str, nth: int, repo_dir: Path, call: str, *args: str) -> None:
    """Open the repository at ``repo_dir`` (password ``pw``) in a child and run ``call``
    there, which sees ``repo``, ``fault``, ``args`` and ``Path``; fail unless the child
    died of the SIGKILL at the ``nth`` ``point`` (one that finishes never reached it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _FRAME + textwrap.dedent(call), point, str(nth), str(repo_dir), *args],
        capture_output=True, timeout=300, check=False, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
