"""A CSI driver process that pauses every group snapshot while its members are frozen.

Usage: group_driver_child.py HOME SOCKET KUBELET [--no-pause]. Prints ``serving`` once the
socket is up; at the engine's ``group.frozen`` step prints ``frozen`` and waits for a line
on stdin (unless ``--no-pause``), so the test can SIGKILL the driver at that exact point,
through the real socket.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from statehold.csi.backend_local import LocalBackend
from statehold.csi.server import CsiServer, ServerConfig
from statehold.engine.node import Node


def main() -> int:
    home, sock, kubelet = (Path(a) for a in sys.argv[1:4])
    pause = "--no-pause" not in sys.argv[4:]

    def hook(step: str) -> None:
        if pause and step == "group.frozen":
            print("frozen", flush=True)
            sys.stdin.readline()

    node = Node(home, fault_hook=hook)
    cfg = ServerConfig(endpoint=f"unix://{sock}", node_id="node-a", home=home,
                       allowed_roots=(kubelet,), grace=1.0)
    server = CsiServer(cfg, local=LocalBackend(cfg.backend_config(), node=node), with_shared=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop(1.0))
    server.start()
    print("serving", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
