"""Certificates and in-process agents on 127.0.0.1 for the agent's unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from statehold.agent import pki
from statehold.agent.server import AgentConfig, AgentServer
from tests.unit.agent.memory_copies import MemoryCopies


@pytest.fixture(scope="session")
def ca() -> pki.KeyPair:
    return pki.create_ca()


@pytest.fixture
def bundle_for(ca: pki.KeyPair) -> Callable[..., pki.Bundle]:
    def make(name: str, role: pki.Role = "node") -> pki.Bundle:
        return pki.Bundle(ca.cert, pki.issue(ca, name, ips=("127.0.0.1",), role=role))

    return make


@pytest.fixture
def agents(tmp_path: Path, bundle_for: Callable[..., pki.Bundle]) -> Iterator[Callable[..., AgentServer]]:
    """``agents("n1", copies)`` -> a started AgentServer on 127.0.0.1 (replication loop not
    running unless ``replicate=True``); all stopped at teardown."""
    started: list[AgentServer] = []

    def make(name: str, copies: MemoryCopies, *, replicate: bool = False, **kw: object) -> AgentServer:
        cfg = AgentConfig(node=name, listen="127.0.0.1:0", bundle=bundle_for(name),
                          home=tmp_path / name, **kw)  # type: ignore[arg-type]
        server = AgentServer(cfg, copies)
        started.append(server)
        server.start(replicate=replicate)
        return server

    try:
        yield make
    finally:
        for s in started:
            s.stop(grace=0)
