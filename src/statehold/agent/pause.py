"""Pause points for tests that must act *mid-stream* (kill an agent, cut a link).

An agent started with ``--pause-dir DIR`` (tests only) calls :meth:`Pauser.point` at named
places: ``send.<n>`` before a primary sends the n-th frame (from 0) of a stream,
``apply.<n>`` before a replica applies its n-th frame. A point is *armed* by the file
``DIR/<name>.wait``; an armed point writes ``DIR/<name>.reached`` and holds the thread
until ``DIR/<name>.go`` exists, then disarms itself (removes ``.wait`` and ``.go``), so the
next stream runs through. Both sides wait for a file to appear: a condition, never a delay.
Without a directory every point is a no-op.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("statehold.agent")


class Pauser:
    def __init__(self, directory: Path | None, *, poll: float = 0.02) -> None:
        self.directory = directory
        self._poll = poll

    def point(self, name: str) -> None:
        d = self.directory
        if d is None:
            return
        wait, go = d / f"{name}.wait", d / f"{name}.go"
        if not wait.exists():
            return
        log.warning("pause point=%s reached (tests only)", name)
        (d / f"{name}.reached").touch()
        while not go.exists():
            time.sleep(self._poll)
        wait.unlink(missing_ok=True)
        go.unlink(missing_ok=True)
        log.warning("pause point=%s released", name)


NO_PAUSE = Pauser(None)
