"""Fixtures for the CSI integration tests: a driver over the engine's ``pool`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from statehold.engine.node import Node
from statehold.engine.pool import Pool
from tests.integration.csi.harness import Driver, running_driver


@pytest.fixture
def driver(node: Node, pool: Pool) -> Iterator[Driver]:
    with running_driver(node, node.home) as d:
        yield d
