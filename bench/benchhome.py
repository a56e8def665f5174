"""What every engine benchmark does last: release exactly what it made under its own home."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from statehold.engine import loop
from statehold.engine.node import Node
from statehold.engine.pool import Pool


def cleanup(node: Node, pool: Pool | None, home: Path, volumes: list[str]) -> None:
    """Detach and delete our volumes, destroy the pool, and check nothing stays attached."""
    try:
        if pool is not None:
            for name in volumes:
                try:
                    for target in pool.get_volume(name).mounts:
                        pool.unmount(name, Path(target))
                    pool.detach(name)
                    pool.delete_volume(name)
                except Exception as exc:  # keep cleaning: report, then fall through
                    print(f"warning: {name}: {exc}", file=sys.stderr)
            node.destroy_pool(pool.name)
    finally:
        node.close()
        for dev in loop.under(home):  # only devices backed by files under our own home
            print(f"warning: detaching leftover {dev}", file=sys.stderr)
            loop.detach(dev)
        shutil.rmtree(home, ignore_errors=True)
