"""Process-wide settings, read once in ``main`` and passed down.

Precedence: defaults < environment (``STATEHOLD_*``) < command-line flags. Nothing below the
entry points reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path = Path(".statehold")
    """Where file-backed pool images, pool mount points and the node registry live."""

    log_level: str = "WARNING"
    """Python logging level name for the process."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        s = cls()
        if "STATEHOLD_HOME" in env:
            s = replace(s, home=Path(env["STATEHOLD_HOME"]))
        if "STATEHOLD_LOG_LEVEL" in env:
            s = replace(s, log_level=env["STATEHOLD_LOG_LEVEL"].upper())
        return s
