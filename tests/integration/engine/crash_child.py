"""Child process of the crash test: run one engine operation, SIGKILL itself at one step.

Usage: crash_child.py HOME POOL STEP OP JSON_ARGS. Exits 0 if the operation finished
without reaching STEP (the test treats that as a failure of the step table). With
``pause:STEP`` the child prints ``paused`` at STEP and waits for a line on stdin.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from statehold.engine.node import Node
from statehold.engine.types import PoolSpec, Source, SourceKind


def main() -> int:
    home, pool_name, step, op, raw = sys.argv[1:6]
    args = json.loads(raw)

    pause = step.startswith("pause:")
    wanted = step.removeprefix("pause:")

    def hook(name: str) -> None:
        if name != wanted:
            return
        if pause:  # hold the operation (and the pool lock) until the parent says go
            print("paused", flush=True)
            sys.stdin.readline()
            return
        os.kill(os.getpid(), signal.SIGKILL)

    node = Node(Path(home), fault_hook=hook)
    if op == "create_pool":
        node.create_pool(PoolSpec(name=args["name"], image_size=args["size"]))
        return 0
    if op == "import_pool":
        node.import_pool([args["image"]])
        return 0
    if op == "export_pool":
        node.export_pool(args["name"])
        return 0
    pool = node.pool(pool_name)
    if op == "create_volume":
        pool.create_volume(args["name"], args["size"], fs=args["fs"])
    elif op == "clone":
        pool.create_volume(args["name"], args["size"], fs=args["fs"],
                           source=Source(SourceKind(args["kind"]), args["source"]))
    elif op == "create_snapshot":
        pool.create_snapshot(args["volume"], args["name"])
    elif op == "expand":
        pool.expand(args["name"], args["size"])
    elif op == "delete_volume":
        pool.delete_volume(args["name"])
    elif op == "delete_snapshot":
        pool.delete_snapshot(args["name"])
    else:
        raise SystemExit(f"unknown op {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
