"""Usage accounting: how many bytes a directory tree holds, when no quota can tell us.

Counts allocated blocks (``st_blocks * 512``, what ``du`` and quotas count: a sparse file
costs only its data), each hard-linked inode once, and never follows symlinks or crosses
into another filesystem mounted inside the tree. Files that vanish during the walk are
skipped: a live volume changes while we look at it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from statehold.errors import NotFound, Unavailable


@dataclass(frozen=True, slots=True)
class TreeUsage:
    bytes: int
    inodes: int


def tree_usage(path: Path) -> TreeUsage:
    """Allocated bytes and inode count under ``path`` (including ``path`` itself)."""
    try:
        top = os.lstat(path)
    except FileNotFoundError as exc:
        raise NotFound(f"{path} does not exist") from exc
    except OSError as exc:
        raise Unavailable(f"cannot stat {path}: {exc}") from exc
    seen: set[tuple[int, int]] = set()
    total = 0
    inodes = 0
    stack = [str(path)]
    # The top directory's own blocks are not counted: an empty volume reports 0 bytes.
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise Unavailable(f"cannot list {current}: {exc}") from exc
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_dev != top.st_dev:
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            inodes += 1
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return TreeUsage(bytes=total, inodes=inodes)
