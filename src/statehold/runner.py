"""The one way Statehold runs Linux tools.

Argument lists only (never a shell), a timeout on every call, one log line per command,
and a :class:`~statehold.errors.CommandError` carrying argv, exit code and stderr.
Parsers of tool output live beside their callers as pure functions.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence

from statehold.errors import CommandError

log = logging.getLogger("statehold.run")

DEFAULT_TIMEOUT = 120.0


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; raise CommandError on a non-zero exit (when ``check``) or a timeout."""
    log.debug("run argv=%s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, f"timed out after {timeout}s") from exc
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc
