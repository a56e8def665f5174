"""Scheduled trims on the node: every volume of a StorageClass with ``trimSchedule`` gets its
filesystem trimmed at each slot of that cron line (UTC), so space deleted inside volumes
returns to the pool without anyone running ``fstrim`` (engine/trim.py does the work).

It runs in the CSI node plugin, the one long-running process on every node that sees the
volumes' mounts, as one daemon thread: each ``interval`` seconds it trims the mounted
volumes whose slot came since their last trim. It takes the servicers' per-volume lock for
the trim, so a NodeUnstageVolume meanwhile is answered ABORTED (and retried by the
kubelet) instead of failing on a busy mount; a volume whose lock is held is left for the
next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from statehold.csi.status import VolumeLocks
from statehold.engine import trim
from statehold.engine.node import Node
from statehold.errors import Aborted

log = logging.getLogger("statehold.csi.trimmer")

DEFAULT_INTERVAL = 60.0
"""Seconds between two looks at the schedules: a slot is served within a minute."""


class Trimmer:
    """Trims due volumes of ``node``'s pools, under the CSI servicers' ``locks``."""

    def __init__(self, node: Node, locks: VolumeLocks, *, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.node, self.locks, self.interval, self.clock = node, locks, interval, clock
        self.last: list[trim.Outcome] = []
        """What the latest round did (for tests and the curious)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: float | None = None) -> list[trim.Outcome]:
        """One round: trim every mounted volume whose schedule is due."""
        self.node.refresh()  # pools a CLI beside us created or exported since
        when = self.clock() if now is None else now
        outcomes: list[trim.Outcome] = []
        for pool in self.node.pools():
            outcomes += trim.run_due([pool], when, hold=self.locks.hold)
        for out in outcomes:
            if out.result is not None:
                log.info("scheduled trim volume=%s released=%d", out.volume, out.result.released)
            elif out.error and "already in progress" not in out.error:
                log.warning("scheduled trim volume=%s error=%s", out.volume, out.error)
        self.last = outcomes
        return outcomes

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Aborted:
                continue  # a volume busy with a CSI call: next round
            except Exception:  # a background round must survive anything one round throws
                log.exception("scheduled trim round failed; next try in %ss", self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="csi-trimmer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
