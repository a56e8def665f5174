"""``fsfreeze``: quiesce a mounted filesystem so a reflink of its device is consistent.

Freezing flushes dirty data and the journal to the (loop) device, which with direct I/O
means to the backing file; the snapshot then sees a clean filesystem. A frozen filesystem
blocks every writer, so thawing happens in ``finally`` whatever went wrong; crash recovery
thaws the mounts named in an unfinished snapshot intent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from statehold.errors import CommandError
from statehold.runner import run


def freeze(target: str) -> None:
    run(["fsfreeze", "--freeze", target], timeout=120)


def thaw(target: str) -> bool:
    """Thaw ``target``; False when it was not frozen (or is gone), which is fine."""
    try:
        run(["fsfreeze", "--unfreeze", target], timeout=60)
    except CommandError:
        return False
    return True


@contextlib.contextmanager
def frozen(target: str | None) -> Iterator[None]:
    """Freeze ``target`` for the block, thaw afterwards; ``None`` freezes nothing."""
    if target is None:
        yield
        return
    freeze(target)
    try:
        yield
    finally:
        thaw(target)
