"""Child process of the replication crash tests: run one side, SIGKILL itself at one step.

Usage: crash_child.py HOME POOL VOLUME STEP SIDE ARG
* SIDE ``receive``: apply the encoded frames in file ARG (``Receiver.apply``);
* SIDE ``send``: ``Sender.open`` with the JSON arguments ARG, then read the whole stream.
Exits 0 if the operation finished without reaching STEP (the test counts that a failure).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from statehold.engine.node import Node
from statehold.replication import Receiver, Sender
from statehold.replication.wire import read_frames


def main() -> int:
    home, pool_name, volume, step, side, arg = sys.argv[1:7]

    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    pool = Node(Path(home), fault_hook=hook).pool(pool_name)
    if side == "receive":
        with open(arg, "rb") as fh:
            Receiver(pool, volume, checkpoint=1 << 20).apply(read_frames(fh))
    elif side == "send":
        for _frame in Sender(pool, volume).open(**json.loads(arg)):
            pass
    else:
        raise SystemExit(f"unknown side {side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
