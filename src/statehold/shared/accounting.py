"""What every size-enforcement mechanism offers (:class:`Enforcer`), and the plain one
that enforces nothing (:class:`Accounting`), which the enforcing mechanisms extend.

Kept apart from :mod:`statehold.shared.quota` (which picks a mechanism by probing the
mount) so that the mechanisms import this module and quota imports them: one direction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from statehold.errors import Unavailable
from statehold.shared.copying import remove_tree
from statehold.shared.types import CopyMethod, QuotaKind
from statehold.shared.usage import TreeUsage, tree_usage


class Enforcer(Protocol):
    """Contract: every method is idempotent (safe to repeat after a crash)."""

    kind: QuotaKind
    enforcing: bool

    def make_dir(self, path: Path) -> None:
        """Create the (empty) volume directory; present already is fine."""
        ...

    def remove_dir(self, path: Path) -> None:
        """Remove the volume directory and its content; absent is fine."""
        ...

    def assign(self, path: Path, project_id: int | None) -> None:
        """Make the new volume directory (and anything already in it, for clones) one unit
        of accounting. Called once, at create."""
        ...

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        """Set (or raise, online) the limit of the volume at ``path`` to ``size`` bytes."""
        ...

    def release(self, path: Path, project_id: int | None) -> None:
        """Drop the limit (the directory is leaving the set of volumes)."""
        ...

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        ...

    def snapshot(self, src: Path, dst: Path, *, readonly: bool) -> CopyMethod | None:
        """A filesystem-native copy of ``src`` at ``dst``, or None to use a tree copy."""
        ...


class Accounting:
    """No enforcement: plain directories, usage by walking the tree."""

    kind = QuotaKind.ACCOUNTING
    enforcing = False

    def make_dir(self, path: Path) -> None:
        try:
            path.mkdir(mode=0o777, exist_ok=True)
            os.chmod(path, 0o777)  # pods run as arbitrary uids; the share decides access
        except OSError as exc:
            raise Unavailable(f"cannot create {path}: {exc}") from exc

    def remove_dir(self, path: Path) -> None:
        remove_tree(path)

    def assign(self, path: Path, project_id: int | None) -> None:
        return None

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        return None

    def release(self, path: Path, project_id: int | None) -> None:
        return None

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        return tree_usage(path)

    def snapshot(self, src: Path, dst: Path, *, readonly: bool) -> CopyMethod | None:
        return None
