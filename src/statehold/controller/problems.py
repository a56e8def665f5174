"""Problem: why a handler cannot go on, with the reason it reports.

Pure decision code raises it; the reconcilers turn it into a condition, an Event and a
retry decision. ``permanent``: retrying cannot help until the spec changes (bad input,
wrong driver); otherwise the handler retries with backoff (missing Secret, PVC not bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from statehold.errors import StateholdError


class Problem(StateholdError):
    def __init__(self, reason: str, message: str, *, permanent: bool = False,
                 retry_after: float = 30.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Result:
    """What a reconciler tells its caller (the kopf adapter or a test)."""

    outcome: Literal["done", "retry", "failed", "skipped"] = "done"
    message: str = ""
    retry_after: float = 0.0

    @classmethod
    def retry(cls, message: str, after: float) -> Result:
        return cls("retry", message, after)

    @classmethod
    def failed(cls, message: str) -> Result:
        return cls("failed", message)


def backoff(attempt: int, *, base: float = 5.0, cap: float = 300.0) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped."""
    return float(min(cap, base * 2.0 ** max(0, min(attempt, 16))))
