"""XFS project quotas: a hard byte limit on a directory tree, enforced by the kernel.

``xfs_quota -x -c 'project -s -p DIR ID'`` tags DIR and everything under it with project
ID and sets the inherit flag, so new files join the project; ``limit -p bhard=N ID`` sets
the limit. Writes past it fail with EDQUOT (ENOSPC on some kernels). Raising the limit is
one command and takes effect at once: expansion is online. The filesystem must be mounted
with ``prjquota`` (or ``pquota``) and the kernel built with XFS quota support.
"""

from __future__ import annotations

import re
from pathlib import Path

from statehold.errors import CommandError, FailedPrecondition
from statehold.runner import run
from statehold.shared.accounting import Accounting
from statehold.shared.types import QuotaKind
from statehold.shared.usage import TreeUsage, tree_usage

_REPORT_LINE = re.compile(r"^#?(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s")


def project_argv(mountpoint: Path, path: Path, project_id: int) -> list[str]:
    return ["xfs_quota", "-x", "-c", f"project -s -p {path} {project_id}", str(mountpoint)]


def limit_argv(mountpoint: Path, project_id: int, size: int) -> list[str]:
    # Kilobytes with an explicit unit: xfs_quota's bare-number unit differs across versions.
    kib = (size + 1023) // 1024
    return ["xfs_quota", "-x", "-c", f"limit -p bhard={kib}k {project_id}", str(mountpoint)]


def report_argv(mountpoint: Path) -> list[str]:
    return ["xfs_quota", "-x", "-c", "report -p -b -N -n", str(mountpoint)]


def parse_report(text: str) -> dict[int, tuple[int, int]]:
    """``report -p -b -N -n`` output → {project id: (used bytes, hard limit bytes)}.

    Lines look like ``#1001   10240   0   20480   00 [--------]``; numbers are 1 KiB
    blocks. Lines that do not match (headers, blank) are skipped.
    """
    result: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        match = _REPORT_LINE.match(line.strip())
        if match:
            pid, used, _soft, hard = (int(g) for g in match.groups())
            result[pid] = (used * 1024, hard * 1024)
    return result


class XfsProject(Accounting):
    kind = QuotaKind.XFS_PROJECT
    enforcing = True

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint

    def _xfs_quota(self, argv: list[str]) -> str:
        try:
            return run(argv, timeout=60).stdout
        except CommandError as exc:
            raise FailedPrecondition(f"xfs_quota refused on {self.mountpoint}: {exc.stderr}") from exc

    def assign(self, path: Path, project_id: int | None) -> None:
        # Tags the whole tree once (a clone arrives full); later files inherit the id.
        if project_id is None:
            raise FailedPrecondition(f"{path}: an XFS project quota needs a project id")
        self._xfs_quota(project_argv(self.mountpoint, path, project_id))

    def apply(self, path: Path, size: int, project_id: int | None) -> None:
        if project_id is None:
            raise FailedPrecondition(f"{path}: an XFS project quota needs a project id")
        self._xfs_quota(limit_argv(self.mountpoint, project_id, size))

    def release(self, path: Path, project_id: int | None) -> None:
        if project_id is not None:
            self._xfs_quota(limit_argv(self.mountpoint, project_id, 0))

    def usage(self, path: Path, project_id: int | None) -> TreeUsage:
        walked = tree_usage(path)  # inode count, and the fallback when the report lacks us
        if project_id is None:
            return walked
        report = parse_report(self._xfs_quota(report_argv(self.mountpoint)))
        if project_id not in report:
            return walked
        return TreeUsage(bytes=report[project_id][0], inodes=walked.inodes)
