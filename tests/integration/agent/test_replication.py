"""Replication between three agents, each in its own network namespace with its own pool,
over real TCP and mutual TLS: a seed, an incremental, and the faults of the issue's test
plan (primary's agent SIGKILLed mid-stream, link cut mid-stream, replica killed while
applying, seed interrupted and resumed). Every case checks bytes by checksum: a replica's
volume against the primary's snapshot of the point the replica acknowledged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import Agents, MiB, create_volume, scribble, sha256

pytestmark = [pytest.mark.root, pytest.mark.slow]


def data_bytes(path: Path) -> int:
    """Bytes in the file's MiB chunks that are not all zeros (what a seed sends)."""
    zeros, total = bytes(MiB), 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            total += len(chunk) if chunk != zeros[:len(chunk)] else 0
    return total


@dataclass
class Setup:
    cluster: Cluster
    agents: Agents
    primary: NetNode
    replicas: list[NetNode]

    def replica_matches(self, replica: NetNode, point: str) -> None:
        """The replica acknowledged ``point`` and its volume holds exactly that point's bytes."""
        status = self.agents.status(replica)
        assert (status["role"], status["point"]) == ("replica", point)
        want = sha256(self.agents.point_file(self.primary, point))
        assert sha256(self.agents.volume_file(replica)) == want
        assert sha256(self.agents.point_file(replica, point)) == want


@pytest.fixture
def setup(net_cluster: Callable[..., Cluster], scratch: Path) -> Iterator[Setup]:
    """Three nodes: a 256 MiB block volume with 48 MiB of random data on n1 (primary at
    epoch 1), agents on all three, n2 and n3 its replicas, nothing replicated yet."""
    cluster = net_cluster(3)
    agents = Agents(cluster, scratch / "ca")
    n1, n2, n3 = cluster.nodes
    create_volume(cluster, n1)
    scribble(agents.volume_file(n1), 48, seed=1)
    agents.start(n1, replicas=[n2, n3])
    agents.start(n2)
    agents.start(n3)
    _code, reply = agents.ask(n1, "promote", f"{n1.pool}/db", "--epoch", "1")
    assert (reply["role"], reply["epoch"]) == ("primary", "1")
    yield Setup(cluster, agents, n1, [n2, n3])


def seeded(s: Setup) -> str:
    """Seed both replicas; the point they acknowledged."""
    reports = s.agents.sync(s.primary)
    points = {r["point"] for r in reports.values()}
    assert len(points) == 1 and all(not r["last_error"] for r in reports.values()), reports
    return points.pop()


def test_seed_then_incremental_reach_every_replica_byte_for_byte(setup: Setup) -> None:
    s = setup
    p1 = seeded(s)
    for r in s.replicas:
        s.replica_matches(r, p1)
    before = {r["node"]: int(r["sent_bytes"]) for r in s.agents.status(s.primary)["replicas"]}
    assert all(sent >= 40 * 1024 * 1024 for sent in before.values())  # the data, not the holes
    scribble(s.agents.volume_file(s.primary), 4, seed=2)
    p2 = next(iter(s.agents.sync(s.primary).values()))["point"]
    assert p2 != p1
    for r in s.replicas:
        s.replica_matches(r, p2)
    status = s.agents.status(s.primary)
    for r in status["replicas"]:
        sent = int(r["sent_bytes"]) - before[r["node"]]
        assert 4 * 1024 * 1024 <= sent <= 5 * 1024 * 1024, r  # about the 4 MiB changed
        assert float(r["lag_seconds"]) >= 0 and r["point"] == p2


def test_primary_agent_sigkilled_mid_stream_leaves_the_replica_at_its_point(setup: Setup) -> None:
    s = setup
    n1, (n2, n3) = s.primary, s.replicas
    p1 = seeded(s)
    scribble(s.agents.volume_file(n1), 16, seed=3)
    s.agents.arm(n1, "send.4")
    sync = s.agents.spawn_sync(n1)
    s.agents.wait_reached(n1, "send.4")  # n2's stream is open, 4 frames sent
    s.agents.kill(n1)
    s.agents.disarm(n1, "send.4")
    assert sync.wait(60) != 0
    s.replica_matches(n2, p1)
    s.replica_matches(n3, p1)
    s.agents.start(n1)
    p2 = next(iter(s.agents.sync(n1).values()))["point"]
    assert p2 != p1
    s.replica_matches(n2, p2)
    s.replica_matches(n3, p2)


def test_link_cut_mid_stream_and_restored_leaves_the_replica_at_its_point(setup: Setup) -> None:
    s = setup
    n1, (n2, n3) = s.primary, s.replicas
    p1 = seeded(s)
    scribble(s.agents.volume_file(n1), 16, seed=4)
    s.agents.arm(n1, "send.4")
    sync = s.agents.spawn_sync(n1)
    s.agents.wait_reached(n1, "send.4")
    s.cluster.link_down(n2)
    s.agents.release(n1, "send.4")  # the primary sends on into the cut link
    assert sync.wait(120) != 0       # n2's stream failed (keepalive), n3's went through
    s.replica_matches(n2, p1)         # asked from n2's own namespace: its link is down
    s.cluster.link_up(n2)
    # the replica lets go of the dead stream when its keepalive fires: until then a new
    # stream is refused as busy, so retry until one goes through
    wait_for(lambda: s.agents.try_sync(n1), 120, "a sync after the link came back")
    p2 = s.agents.status(n2)["point"]
    assert p2 != p1 and s.agents.status(n3)["point"] == p2
    s.replica_matches(n2, p2)
    s.replica_matches(n3, p2)


def test_replica_killed_while_applying_restarts_and_converges(setup: Setup) -> None:
    s = setup
    n1, (n2, n3) = s.primary, s.replicas
    p1 = seeded(s)
    scribble(s.agents.volume_file(n1), 16, seed=5)
    s.agents.arm(n2, "apply.4")
    sync = s.agents.spawn_sync(n1)
    s.agents.wait_reached(n2, "apply.4")  # n2 applied 4 frames of the incremental
    s.agents.kill(n2)
    s.agents.disarm(n2, "apply.4")
    assert sync.wait(120) != 0
    s.agents.start(n2)
    s.replica_matches(n2, p1)
    wait_for(lambda: s.agents.try_sync(n1), 120, "a sync after the replica came back")
    p2 = s.agents.status(n2)["point"]
    assert p2 != p1
    s.replica_matches(n2, p2)
    s.replica_matches(n3, p2)


def test_seed_interrupted_resumes_where_it_stopped(net_cluster: Callable[..., Cluster],
                                                   scratch: Path) -> None:
    cluster = net_cluster(2)
    agents = Agents(cluster, scratch / "ca")
    n1, n2 = cluster.nodes
    create_volume(cluster, n1)
    scribble(agents.volume_file(n1), 48, seed=6)
    agents.start(n1, replicas=[n2])
    agents.start(n2, checkpoint="4Mi")
    agents.ask(n1, "promote", f"{n1.pool}/db", "--epoch", "1")
    agents.arm(n2, "apply.30")
    sync = agents.spawn_sync(n1)
    agents.wait_reached(n2, "apply.30")  # 29 extents (of 1 MiB at most) applied
    agents.kill(n2)
    agents.disarm(n2, "apply.30")
    assert sync.wait(120) != 0
    agents.start(n2, checkpoint="4Mi")
    offset = int(agents.status(n2)["resume_offset"])
    assert offset > 0
    sent_before = int(agents.status(n1)["replicas"][0]["sent_bytes"])
    reports = agents.sync(n1)
    point = reports["n2"]["point"]
    resumed = int(reports["n2"]["sent_bytes"]) - sent_before
    # 29 extents were applied with a checkpoint every 4 MiB: at least 24 MiB of the data
    # lies below the resume offset and does not travel again
    assert resumed <= data_bytes(agents.volume_file(n1)) - 24 * MiB, (offset, resumed)
    status = agents.status(n2)
    assert (status["role"], status["point"]) == ("replica", point)
    want = sha256(agents.point_file(n1, point))
    assert sha256(agents.volume_file(n2)) == want


def test_the_loop_replicates_unasked_and_a_stopped_agent_exits_cleanly(
        net_cluster: Callable[..., Cluster], scratch: Path) -> None:
    cluster = net_cluster(2)
    agents = Agents(cluster, scratch / "ca")
    n1, n2 = cluster.nodes
    create_volume(cluster, n1)
    scribble(agents.volume_file(n1), 8, seed=7)
    primary = agents.start(n1, replicas=[n2], interval=0.5)
    agents.start(n2)
    agents.ask(n1, "promote", f"{n1.pool}/db", "--epoch", "1")

    def replicated() -> dict[str, str] | None:
        [r] = agents.status(n1)["replicas"]
        return r if r["point"] and float(r["lag_seconds"]) >= 0 else None

    wait_for(replicated, 120, "the loop's first acknowledged point")
    primary.terminate()  # SIGTERM: in-flight streams get the grace, then the process exits
    assert primary.wait(60) == 0
    point = agents.status(n2)["point"]
    assert sha256(agents.volume_file(n2)) == sha256(agents.point_file(n1, point))
