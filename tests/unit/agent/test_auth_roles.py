"""Which certificate role may call which agent method (agent/auth.py)."""

from __future__ import annotations

import pytest

from statehold.agent.auth import allowed
from statehold.agent.gen import agent_pb2

METHODS = sorted(agent_pb2.DESCRIPTOR.services_by_name["Agent"].methods_by_name)
CONTROLLER_ONLY = {"Promote", "Demote", "SetReplicas", "Sync", "Release", "ExportPool"}


@pytest.mark.parametrize("method", METHODS)
def test_a_node_may_call_only_what_agents_ask_of_each_other(method: str) -> None:
    path = f"/statehold.agent.v1.Agent/{method}"
    assert allowed("controller", path)
    assert allowed("node", path) is (method not in CONTROLLER_ONLY)


def test_every_controller_only_method_exists() -> None:
    assert set(METHODS) >= CONTROLLER_ONLY
