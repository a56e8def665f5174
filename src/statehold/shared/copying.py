"""Copies of directory trees for snapshots and clones: reflink when the filesystem can.

``cp -a --reflink=always`` shares extents (copy on write: the copy costs metadata until
either side is written); ``cp -a --reflink=never`` copies bytes. Which one a root gets is
decided by a probe on that filesystem, once, so the method we report is the one used,
not a guess (an empty tree "reflinks" anywhere).

On SMB (``plain=True``) a copy keeps only times: ``cp -a`` there asks smbnetfs to copy ACLs
and xattrs it cannot take, which fails with EIO and leaves the client answering EIO for a
while (measured); modes and owners are the server's on SMB anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from statehold.errors import CommandError, OutOfCapacity, Unavailable
from statehold.runner import run
from statehold.shared.types import CopyMethod

COPY_TIMEOUT = 3600.0


def reflink_supported(scratch_dir: Path) -> bool:
    """Whether ``cp --reflink=always`` works inside ``scratch_dir``'s filesystem."""
    probe = scratch_dir / f".reflink-probe-{os.getpid()}"
    copy = scratch_dir / f".reflink-probe-{os.getpid()}.copy"
    try:
        probe.write_bytes(b"statehold reflink probe\n")
        result = run(["cp", "--reflink=always", "--", str(probe), str(copy)], check=False, timeout=30)
        return result.returncode == 0
    except OSError as exc:
        raise Unavailable(f"cannot probe {scratch_dir}: {exc}") from exc
    finally:
        for path in (probe, copy):
            with contextlib.suppress(OSError):
                path.unlink()


def _cp(reflink: bool, plain: bool) -> list[str]:
    keep = ["-R", "--no-dereference", "--preserve=timestamps"] if plain else ["-a"]
    return ["cp", *keep, f"--reflink={'always' if reflink else 'never'}"]


def copy_tree(src: Path, dst: Path, *, reflink: bool, plain: bool = False) -> CopyMethod:
    """Copy directory ``src`` to the new path ``dst`` (must not exist), keeping owners,
    modes, times, links and xattrs (only times with ``plain``). On failure nothing is left
    at ``dst``."""
    argv = [*_cp(reflink, plain), "--no-target-directory", "--", str(src), str(dst)]
    try:
        run(argv, timeout=COPY_TIMEOUT)
    except CommandError as exc:
        remove_tree(dst)
        if "No space left" in exc.stderr or "quota exceeded" in exc.stderr.lower():
            raise OutOfCapacity(f"no room to copy {src}: {exc.stderr}") from exc
        raise Unavailable(f"copy of {src} failed: {exc.stderr}") from exc
    return CopyMethod.REFLINK if reflink else CopyMethod.COPY


def copy_into(src: Path, dst: Path, *, reflink: bool, plain: bool = False) -> None:
    """Copy the content of directory ``src`` into the existing directory ``dst`` (and
    ``src``'s own mode, owner and times onto ``dst``)."""
    try:
        run([*_cp(reflink, plain), "-T", "--", str(src), str(dst)], timeout=COPY_TIMEOUT)
    except CommandError as exc:
        if "No space left" in exc.stderr or "quota exceeded" in exc.stderr.lower():
            raise OutOfCapacity(f"no room to copy {src}: {exc.stderr}") from exc
        raise Unavailable(f"copy of {src} into {dst} failed: {exc.stderr}") from exc


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; absent is fine (idempotent)."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Unavailable(f"cannot remove {path}: {exc}") from exc
