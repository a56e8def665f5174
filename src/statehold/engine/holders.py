"""Which processes hold files under a directory, from ``/proc``: open descriptors, working
and root directories, and mapped files (SQLite maps its ``-shm`` file).

A pool filesystem cannot be unmounted while any of these points into it. The export of a
pool waits until none does, and names those that still do when it gives up
(docs/design/pool-metadata.md, "Export"). Only processes this one may inspect are seen: in
a container without the host's PID namespace, holders in other containers are not, and an
unmount that still fails then says so instead of naming them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_DELETED = " (deleted)"
SHOWN = 4
"""Uses listed per holder in a message (the rest are counted)."""


@dataclass(frozen=True, slots=True)
class Holder:
    """One process and what it holds under the scanned directories."""

    pid: int
    command: str
    uses: tuple[str, ...]

    def describe(self) -> str:
        more = len(self.uses) - SHOWN
        shown = ", ".join(self.uses[:SHOWN]) + (f" and {more} more" if more > 0 else "")
        return f"pid {self.pid} ({self.command}): {shown}"


def _under(path: str, roots: Sequence[str]) -> bool:
    live = path.removesuffix(_DELETED)
    return any(live == r or live.startswith(r + "/") for r in roots)


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # gone, or not ours to read
        return None


def _uses(pid_dir: Path, roots: Sequence[str]) -> list[str]:
    uses: list[str] = []
    for what in ("cwd", "root"):
        target = _link(pid_dir / what)
        if target is not None and _under(target, roots):
            uses.append(f"{what} {target}")
    try:
        fds = sorted(os.listdir(pid_dir / "fd"), key=lambda s: int(s) if s.isdigit() else -1)
    except OSError:
        fds = []
    for fd in fds:
        target = _link(pid_dir / "fd" / fd)
        if target is not None and _under(target, roots):
            uses.append(f"fd {fd} {target}")
    try:
        maps = (pid_dir / "maps").read_text(errors="replace")
    except OSError:
        maps = ""
    mapped: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and _under(parts[5], roots):
            mapped.add(parts[5])
    uses += [f"mapped {m}" for m in sorted(mapped)]
    return uses


def holders(roots: Sequence[Path | str]) -> list[Holder]:
    """Every visible process holding a file or directory under one of ``roots`` (exact path
    prefixes, resolved), by pid."""
    wanted = [os.path.realpath(r).rstrip("/") or "/" for r in roots]
    found: list[Holder] = []
    try:
        entries = [e for e in os.listdir(PROC) if e.isdigit()]
    except OSError:
        return []
    for entry in sorted(entries, key=int):
        pid_dir = PROC / entry
        uses = _uses(pid_dir, wanted)
        if not uses:
            continue
        try:
            command = (pid_dir / "comm").read_text().strip()
        except OSError:
            command = "?"
        found.append(Holder(int(entry), command, tuple(uses)))
    return found
