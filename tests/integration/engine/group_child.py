"""Child process of the group-snapshot crash test: take one group snapshot, die at a step.

Usage: group_child.py HOME GROUP STEP OCCURRENCE HOW MEMBERS_JSON. At the OCCURRENCE-th
time the engine reports STEP, the child SIGKILLs itself (HOW = ``self``: its freeze
keeper lives on and must thaw) or its whole process group (HOW = ``group``: the keeper
dies too, and only recovery can thaw). Exits 0 if the step was never reached.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from statehold.engine.node import Node


def main() -> int:
    home, group, step, occurrence, how, raw = sys.argv[1:7]
    members = [tuple(m) for m in json.loads(raw)]
    seen = 0
    counting = threading.Lock()  # members are cloned on several threads

    def hook(name: str) -> None:
        nonlocal seen
        if name != step:
            return
        with counting:
            seen += 1
            now = seen
        if now == int(occurrence):
            if how == "group":
                # only ever our own group: the test starts us as a session leader
                assert os.getpgrp() == os.getpid(), "not a process group leader"
                os.killpg(0, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    node = Node(Path(home), fault_hook=hook)
    node.snapshot_group(group, members, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
