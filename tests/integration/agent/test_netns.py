"""The multi-node harness itself: nodes reach each other over the bridge and only over it,
a cut link stops traffic and a restored one carries it again, and teardown leaves nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.netns import Cluster, wait_for

pytestmark = [pytest.mark.root]

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen()
while True:
    c, _ = s.accept(); c.sendall(b"hello from " + sys.argv[1].encode()); c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2]))
print(c.recv(100).decode())
"""


def fetch(cluster: Cluster, node_i: int, ip: str, timeout: float = 5.0) -> str:
    done = cluster.run(cluster.nodes[node_i], ["python3", "-c", CLIENT, ip, str(timeout)], check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def test_nodes_talk_over_the_bridge_and_a_cut_link_stops_them(net_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = net_cluster(3)
    n1, _n2, n3 = cluster.nodes
    assert len({n.netns for n in cluster.nodes}) == 3
    cluster.spawn(n1, ["python3", "-c", SERVER, n1.ip])
    assert wait_for(lambda: fetch(cluster, 1, n1.ip), what="n1 serving") == f"hello from {n1.ip}"
    assert fetch(cluster, 2, n1.ip) == f"hello from {n1.ip}"
    # the host's namespace has no route to the nodes
    host = subprocess.run(["python3", "-c", CLIENT, n1.ip, "1"], capture_output=True, check=False)
    assert host.returncode != 0
    cluster.link_down(n3)
    assert fetch(cluster, 2, n1.ip, timeout=1.0) == ""
    cluster.link_up(n3)
    assert wait_for(lambda: fetch(cluster, 2, n1.ip), what="link restored") == f"hello from {n1.ip}"


def test_each_node_has_its_own_pool_and_teardown_removes_everything(scratch: Path) -> None:
    with Cluster(scratch / "c", 2) as cluster:
        names = [n.netns for n in cluster.nodes] + [cluster.switch]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert all(name in listed for name in names)
        out = cluster.statehold(cluster.nodes[0], "pool", "get", "-o", "json", "--home",
                                str(cluster.nodes[0].home))
        assert '"name": "pool"' in out
        proc = cluster.spawn(cluster.nodes[1], ["sleep", "600"])
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)
    from tests.integration.cli.helpers import loops_backed_under

    assert loops_backed_under(scratch) == []
