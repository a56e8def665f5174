"""``python -m statehold.csi.codegen`` (what ``make proto`` and ``make proto-check`` run).

The generator itself is :mod:`statehold.protogen`, shared with the agent's proto; this
entry point regenerates (or, with ``--check``, verifies) the code of *every* proto, so the
Makefile's staleness check covers ``agent.proto`` as well as ``csi.proto``.
``generate``/``differences`` keep their CSI-only meaning for callers that name one target.
"""

from __future__ import annotations

import sys
from pathlib import Path

from statehold import protogen

PROTO = protogen.CSI.proto
GEN = protogen.CSI.gen
FILES = protogen.CSI.files[:-1]


def generate(out: Path) -> list[Path]:
    """Generate the CSI modules into ``out``."""
    return protogen.generate(protogen.CSI, out)


def differences(committed: Path, fresh: Path) -> list[str]:
    """Names of generated CSI files whose committed copy differs from a fresh generation."""
    return protogen.differences(protogen.CSI, committed, fresh)


def main(argv: list[str] | None = None) -> int:
    return protogen.main(argv, prog="python -m statehold.csi.codegen")


if __name__ == "__main__":
    sys.exit(main())
