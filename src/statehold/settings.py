"""Process-wide settings and secrets, read once in ``main`` and passed down.

Precedence: defaults < environment (``STATEHOLD_*``) < command-line flags. Nothing below the
entry points reads ``os.environ``: the CLI reads it once (``statehold.cli.context``) and
hands these objects to every command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from statehold.errors import InvalidArgument

_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path = Path(".statehold")
    """Where file-backed pool images, pool mount points and the node registry live
    (``STATEHOLD_HOME``; ``--home`` wins)."""

    log_level: str = "WARNING"
    """Python logging level name for the process (``STATEHOLD_LOG_LEVEL``)."""

    csi_allowed_roots: tuple[Path, ...] = ()
    """Extra directories under which CSI staging/target paths may lie, besides
    ``/var/lib/kubelet`` and ``--allowed-root`` (``STATEHOLD_CSI_ALLOWED_ROOTS=a:b``; for
    conformance suites that use their own directories)."""

    freeze_expedite_rcu: bool = True
    """Expedite the kernel's RCU grace periods while filesystems are being frozen, which
    makes a FIFREEZE ~25x shorter (``STATEHOLD_FREEZE_EXPEDITE_RCU=0`` turns it off;
    ``statehold.engine.rcu`` says what it touches)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        s = cls()
        if "STATEHOLD_FREEZE_EXPEDITE_RCU" in env:
            flag = env["STATEHOLD_FREEZE_EXPEDITE_RCU"].strip().lower()
            if flag not in _FLAGS:
                raise InvalidArgument(f"STATEHOLD_FREEZE_EXPEDITE_RCU must be one of "
                                 f"{', '.join(sorted(_FLAGS))}, got {flag!r}")
            s = replace(s, freeze_expedite_rcu=_FLAGS[flag])
        if "STATEHOLD_HOME" in env:
            s = replace(s, home=Path(env["STATEHOLD_HOME"]))
        if "STATEHOLD_LOG_LEVEL" in env:
            s = replace(s, log_level=env["STATEHOLD_LOG_LEVEL"].upper())
        roots = tuple(Path(r) for r in env.get("STATEHOLD_CSI_ALLOWED_ROOTS", "").split(":") if r)
        if roots:
            s = replace(s, csi_allowed_roots=roots)
        return s


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secrets from the environment, read at the same moment as :class:`Settings`.

    Kept apart from Settings so they are never logged or printed with them (``repr`` hides
    every value). Empty means "not given"; a command that needs one says which.
    """

    repo_password: str = field(default="", repr=False)
    """A backup repository's password (``STATEHOLD_REPO_PASSWORD``; ``--password-file`` wins)."""

    s3_access_key: str | None = field(default=None, repr=False)
    """S3 access key (``AWS_ACCESS_KEY_ID``); else a target's credentials file."""

    s3_secret_key: str | None = field(default=None, repr=False)
    """S3 secret key (``AWS_SECRET_ACCESS_KEY``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Secrets:
        env = os.environ if env is None else env
        return cls(
            repo_password=env.get("STATEHOLD_REPO_PASSWORD", ""),
            s3_access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            s3_secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        )
