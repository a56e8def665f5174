"""Top-level test configuration: fixture plugins, one per area, each owned by that area."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.engine",
    "tests.fixtures.s3",
    "tests.fixtures.gluster",
    "tests.fixtures.kube",
    "tests.fixtures.netns",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (loop devices, mounts)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
