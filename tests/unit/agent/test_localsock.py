"""The agent's node-local socket on a real Unix socket: root's alone (0600 in a 0700
directory, whatever the directory was), a live socket never stolen, and the local caller
limited to groups this node takes part in (PERMISSION_DENIED before any agent is called);
the plugin's client says where it looked when the agent is not there."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from statehold.agent import pki
from statehold.agent.localsock import LocalGroupsClient, LocalGroupsServicer, LocalSocket
from statehold.engine.groups import Member
from statehold.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable

NODE = "n1"


class Addresses:
    def address(self, node: str) -> str:
        return "127.0.0.1:9"  # never dialled: every call here is refused first


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    ca = pki.create_ca()
    bundle = pki.Bundle(ca.cert, pki.issue(ca, NODE))
    directory = tmp_path / "agent-local"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # as a hostPath DirectoryOrCreate makes it
    sock = LocalSocket(directory / "agent.sock",
                       LocalGroupsServicer(NODE, bundle, lambda: "127.0.0.1:9"))
    sock.start()
    try:
        yield sock.path
    finally:
        sock.stop(0)
    assert not sock.path.exists()


def test_the_socket_is_roots_alone_and_not_stolen(served: Path) -> None:
    assert stat.S_ISSOCK(served.lstat().st_mode)
    assert stat.S_IMODE(served.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.parent.stat().st_mode) == 0o700
    other = LocalSocket(served, LocalGroupsServicer(NODE, pki.Bundle(b"", pki.KeyPair(b"", b"")),
                                                    lambda: ""))
    with pytest.raises(FailedPrecondition, match="another process"):
        other.start()


def test_a_group_this_node_takes_no_part_in_is_refused(served: Path) -> None:
    client = LocalGroupsClient(served, NODE, Addresses())
    try:
        with pytest.raises(PermissionDenied, match="takes part in"):
            client.create("g", {"n2": [Member("pb", "vb", "g-vb")],
                                "n3": [Member("pc", "vc", "g-vc")]}, 5.0)
        with pytest.raises(PermissionDenied):
            client.parts("g", ["n2", "n3"])
        with pytest.raises(PermissionDenied):
            client.delete("g", ["n2"])
        with pytest.raises(InvalidArgument):
            client.parts("g", [NODE, NODE])
    finally:
        client.close()


def test_the_client_names_the_socket_when_no_agent_is_there(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "agent.sock"
    client = LocalGroupsClient(missing, NODE, Addresses())
    try:
        with pytest.raises(Unavailable, match=str(missing)):
            client.create("g", {NODE: [Member("pa", "va", "g-va")],
                                "n2": [Member("pb", "vb", "g-vb")]}, 5.0)
    finally:
        client.close()
