"""Every backup test keeps format 2 index caches in its own temporary directory, never in
the user's ~/.cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _index_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("index-cache")
    monkeypatch.setenv("STATEHOLD_BACKUP_CACHE", str(root))
    yield root
