"""Top-level test configuration: fixture plugins, one per area, each owned by that area."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.engine",
    "tests.fixtures.s3",
    "tests.fixtures.gluster",
    "tests.fixtures.kube",
    "tests.fixtures.netns",
    "tests.fixtures.controlplane",
    "tests.fixtures.workers",
]


@pytest.fixture(scope="session")
def _session_index_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backup-index-cache")


@pytest.fixture(autouse=True)
def _backup_index_cache(_session_index_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Format 2 repositories (which the operator creates too) keep an index cache on local
    disk (format §11.4): in tests under the session's temporary directory, never in the
    user's ~/.cache. Areas that want one per test set ``STATEHOLD_BACKUP_CACHE`` again."""
    monkeypatch.setenv("STATEHOLD_BACKUP_CACHE", str(_session_index_cache))


@pytest.hookimpl(trylast=True)  # after ``-m``/``-k`` deselection: count only what would run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Root tests (loop devices, mounts) never turn into skips: a run that collects them
    without root is an error, so `make test` as another user fails instead of going green
    on the unit tier alone. Unit runs (``tests/unit``, `make unit`) need no root."""
    if os.geteuid() == 0:
        return
    needs_root = [item.nodeid for item in items if item.get_closest_marker("root") is not None]
    if needs_root:
        raise pytest.UsageError(
            f"{len(needs_root)} selected tests need root (loop devices, mounts), e.g. "
            f"{needs_root[0]}: run them as root, or run only the unit tier (make unit, "
            "pytest tests/unit, or -m 'not root')")
