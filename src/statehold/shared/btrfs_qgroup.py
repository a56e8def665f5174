"""btrfs quota groups: each volume a subvolume whose referenced bytes are limited.

Used when the shared root sits on btrfs with quotas enabled (``btrfs quota enable``; we
never enable it ourselves, it costs the whole filesystem some write speed). Writes past
the limit fail with EDQUOT. Snapshots and clones are subvolume snapshots: O(1), copy on
write, and snapshots are truly read-only (``-r``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from statehold.errors import CommandError, FailedPrecondition, Unavailable
from statehold.runner import run
from statehold.shared.accounting import Accounting
from statehold.shared.types import CopyMethod, QuotaKind
from statehold.shared.usage import TreeUsage, tree_usage

_ROW = re.compile(r"^(\d+)/(\d+)\s+(\d+)\s+(\d+)")


def qgroups_enabled(path: Path) -> bool:
    return run(["btrfs", "qgroup", "show", str(path)], check=False, timeout=30).returncode == 0


def parse_qgroup_show(text: str) -> dict[int, int]:
    """``btrfs qgroup show --raw`` → {subvolume id (level-0 qgroup): referenced bytes}."""
    result: dict[int, int] = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if match and match.group(1) == "0":
            result[int(match.group(2))] = int(match.group(3))
    return result


def _is_subvolume(path: Path) -> bool:
    # A subvolume's root directory always has inode number 256 on btrfs.
    try:
        return os.lstat(path).st_ino == 256
    except FileNotFoundError:
        return False


class BtrfsQgroup(Accounting):
    kind = QuotaKind.BTRFS_QGROUP
    enforcing = True

    def _btrfs(self, argv: list[str], what: str) -> str:
        try:
            return run(["btrfs", *argv], timeout=120).stdout
        except CommandError as exc:
            raise FailedPrecondition(f"btrfs {what} failed: {exc.stderr}") from exc

    def make_dir(self, path: Path) -> None:
        if _is_subvolume(path):
            return
        if path.exists():
            raise FailedPrecondition(f"{path} exists and is not a btrfs subvolume")
        self._btrfs(["subvolume", "create", str(path)], "subvolume create")
        os.chmod(path, 0o777)

    def remove_dir(self, path: Path) -> None:
        if not os.path.lexists(path):
            return
        if _is_subvolume(path):
            run(["btrfs", "property", "set", "-ts", str(path), "ro", "false"], check=False, timeout=30)
            self._btrfs(["subvolume", "delete", str(path)], "subvolume delete")
        else:
            super().remove_dir(path)

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        self._btrfs(["qgroup", "limit", str(size), str(path)], "qgroup limit")

    def release(self, path: Path, project_id: int | None) -> None:
        if _is_subvolume(path):
            self._btrfs(["qgroup", "limit", "none", str(path)], "qgroup limit none")

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        walked = tree_usage(path)
        try:
            subvol = int(run(["btrfs", "inspect-internal", "rootid", str(path)], timeout=30).stdout)
            table = parse_qgroup_show(
                run(["btrfs", "qgroup", "show", "--raw", "--sync", str(path)], timeout=60).stdout
            )
        except (CommandError, ValueError) as exc:
            raise Unavailable(f"cannot read btrfs qgroups for {path}: {exc}") from exc
        used = table.get(subvol)
        return walked if used is None else TreeUsage(bytes=used, inodes=walked.inodes)

    def snapshot(self, src: Path, dst: Path, *, readonly: bool) -> CopyMethod | None:
        if not _is_subvolume(src):
            return None
        argv = ["subvolume", "snapshot", *(["-r"] if readonly else []), str(src), str(dst)]
        self._btrfs(argv, "subvolume snapshot")
        return CopyMethod.SUBVOLUME
