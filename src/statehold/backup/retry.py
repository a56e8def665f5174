"""Retry with exponential backoff and jitter, with the sleep injected so tests never sleep."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from statehold.errors import Unavailable

log = logging.getLogger("statehold.backup.retry")

T = TypeVar("T")


class TransientError(Exception):
    """Raised by an attempt to say 'this fault is worth retrying'."""


@dataclass(frozen=True, slots=True)
class Backoff:
    attempts: int = 6
    """Total tries, the first included."""
    base: float = 0.2
    """Delay before the second try, seconds; doubles each time."""
    cap: float = 10.0
    """Largest single delay."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    """Injected so tests count delays instead of waiting."""

    def delays(self) -> list[float]:
        """The nominal delays between tries (jitter is applied on top, 50-100 %)."""
        return [min(self.cap, self.base * 2**i) for i in range(self.attempts - 1)]

    def call(self, what: str, attempt: Callable[[], T]) -> T:
        """Run attempt; retry TransientError with backoff; then Unavailable naming what."""
        last: TransientError | None = None
        delays = self.delays()
        for i in range(self.attempts):
            try:
                return attempt()
            except TransientError as exc:
                last = exc
                if i < len(delays):
                    delay = delays[i] * (0.5 + random.random() / 2)
                    log.info("retry what=%s attempt=%d delay=%.2f error=%s", what, i + 1, delay, exc)
                    self.sleep(delay)
        raise Unavailable(f"{what}: gave up after {self.attempts} attempts: {last}") from last
