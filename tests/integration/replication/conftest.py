"""Two real pools on this host standing for two nodes (each its own home, Node and pool
image); frames pass in-process, through encode/decode as a transport would carry them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from statehold.engine.node import Node
from statehold.engine.types import GiB, PoolSpec
from tests.fixtures.engine import close_node, engine_home_at
from tests.integration.replication.helpers import Pair, Site


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with engine_home_at() as home_a, engine_home_at() as home_b:
        node_a, node_b = Node(home_a), Node(home_b)
        try:
            pool_a = node_a.create_pool(PoolSpec(name="pa", image_size=4 * GiB))
            pool_b = node_b.create_pool(PoolSpec(name="pb", image_size=4 * GiB))
            yield Pair(Site(home_a, node_a, pool_a), Site(home_b, node_b, pool_b))
        finally:
            close_node(node_a)
            close_node(node_b)
