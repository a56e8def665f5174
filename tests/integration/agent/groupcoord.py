"""A coordinator of a group snapshot across nodes, as a process of its own (run inside a
node's namespace), so a test can SIGKILL it between PREPARE and COMMIT.

``python -m tests.integration.agent.groupcoord --certs DIR --out FILE --name G --lease S
--agent n1=IP:PORT ... --member n1=pool/volume/snapshot ... [--gate FILE]``

It writes ``FILE.prepared`` once every node answered READY and, with ``--gate``, waits
there until the gate file exists (a condition, polled). The outcome goes to ``FILE`` as JSON:
``{"ok": true, "attempt": ..., "windows": {...}}`` or ``{"ok": false, "error": ...,
"kind": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from statehold.agent import pki
from statehold.agent.fleet import AgentFleet
from statehold.engine.groups import Member
from statehold.errors import StateholdError


class StaticDirectory:
    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses

    def address(self, node: str) -> str:
        return self.addresses[node]

    def primary(self, volume: str) -> str | None:
        return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--lease", type=float, required=True)
    parser.add_argument("--agent", action="append", default=[])
    parser.add_argument("--member", action="append", default=[])
    parser.add_argument("--gate", type=Path)
    parser.add_argument("--commit-grace", type=float, default=30.0)
    parser.add_argument("--abort-timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    addresses = dict(a.split("=", 1) for a in args.agent)
    parts: dict[str, list[Member]] = defaultdict(list)
    for spec in args.member:
        node, rest = spec.split("=", 1)
        pool, volume, snapshot = rest.split("/")
        parts[node].append(Member(pool, volume, snapshot))

    def checkpoint(step: str) -> None:
        if step != "prepared":
            return
        Path(f"{args.out}.prepared").touch()
        while args.gate is not None and not args.gate.exists():
            time.sleep(0.02)

    fleet = AgentFleet(pki.load_bundle(args.certs), StaticDirectory(addresses), timeout=30)
    try:
        coordinator = fleet.group_coordinator(checkpoint=checkpoint, commit_grace=args.commit_grace,
                                              abort_timeout=args.abort_timeout)
        taken = coordinator.create(args.name, parts, args.lease)
        result = {"ok": True, "attempt": taken.attempt, "windows": dict(taken.windows),
                  "existed": taken.existed, "created_at": taken.created_at}
    except StateholdError as exc:
        result = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
    finally:
        fleet.close()
    args.out.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
