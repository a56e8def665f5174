"""Pools on an existing directory of a reflink-capable filesystem (no disks of their own).

For hosts that already have XFS (reflink=1) or btrfs mounted somewhere: the pool's
``.statehold/``, ``volumes/`` and ``snapshots/`` are made inside the directory, which is
then the pool's mount point. Capacity is the capacity of that filesystem, shared with
whatever else lives on it. Reflink support is proven by cloning a probe file, not guessed
from the filesystem type.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from statehold.engine import mounts
from statehold.engine.ficlone import reflink
from statehold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

META_DB = Path(".statehold") / "meta.db"


def check(directory: Path) -> str:
    """Validate a directory for a new pool; return its filesystem type."""
    if not directory.exists():
        raise NotFound(f"directory {directory} does not exist")
    if not directory.is_dir():
        raise InvalidArgument(f"{directory} is not a directory")
    if (directory / META_DB).exists():
        raise AlreadyExists(f"{directory} already holds a pool: import it instead")
    fd, probe = tempfile.mkstemp(prefix=".statehold-probe-", dir=directory)
    clone = probe + ".clone"
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
        try:
            reflink(Path(probe), Path(clone))
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"{directory} is not on a reflink-capable filesystem (XFS with reflink=1, "
                "or btrfs)") from exc
    finally:
        os.close(fd)
        for leftover in (probe, clone):
            Path(leftover).unlink(missing_ok=True)
    return fs_type_of(directory)


def fs_type_of(directory: Path) -> str:
    """Filesystem type of the mount holding ``directory`` (the longest matching target)."""
    real = os.path.realpath(directory)
    best = ""
    fstype = "unknown"
    for m in mounts.mounts():
        if mounts.is_under(real, m.target) and len(m.target) >= len(best):
            best, fstype = m.target, m.fstype
    return fstype
