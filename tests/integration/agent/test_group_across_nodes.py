"""Group snapshots across nodes: a two-phase freeze through real agents (netns nodes, each
with its own pool and agent over mutual TLS), the coordinator a process of its own.

Each test has two nodes, ``n1`` (pool ``pa``, XFS volume ``va``) and ``n2`` (pool ``pb``,
XFS volume ``vb``), both mounted (one mount namespace: the test reads and writes them). A
writer stamps k into ``va``, fsyncs, then k into ``vb``, fsyncs, then k+1...: a copy of
both taken at one instant holds ``b <= a <= b + 1``; copies at two instants may not.
Failures (coordinator SIGKILLed between PREPARE and COMMIT, an agent SIGKILLed after READY,
a link cut after READY) must leave every member filesystem taking writes again (a probe
write completes; polled with a deadline) and no snapshot kept on any node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from statehold.engine import groupparts, groups
from statehold.engine.node import Node
from statehold.engine.types import FsType, MiB, Source, SourceKind
from tests.fixtures.netns import Cluster, NetNode, wait_for
from tests.integration.agent.harness import Agents
from tests.integration.engine.frozen import frozen_targets

pytestmark = [pytest.mark.root]

ROOT = str(Path(__file__).resolve().parents[3])
LEASE = 4.0
GROUP = "gx"
VOLUMES = {"n1": "va", "n2": "vb"}

WRITER = (
    "import os, sys\n"
    "a = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "b = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "k = 0\n"
    "while True:\n"
    "    k += 1\n"
    "    data = f'{k}\\n'.encode().ljust(4096, b' ')\n"
    "    os.pwrite(a, data, 0); os.fsync(a)\n"
    "    os.pwrite(b, data, 0); os.fsync(b)\n"
    "    if k == 50:\n"
    "        open(sys.argv[3], 'w').close()\n"
)


@dataclass
class World:
    cluster: Cluster
    agents: Agents
    engines: dict[str, Node]
    targets: dict[str, Path]
    scratch: Path

    def node(self, name: str) -> NetNode:
        return next(n for n in self.cluster.nodes if n.name == name)

    def snapshot(self, node: str, group: str = GROUP) -> str:
        return f"{group}-{VOLUMES[node]}"

    def coordinator(self, name: str = GROUP, *, gate: Path | None = None,
                    extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
        n1 = self.node("n1")
        out = self.scratch / f"coord-{name}-{len(n1.procs)}.json"
        argv = [sys.executable, "-m", "tests.integration.agent.groupcoord", "--certs",
                str(self.agents.certs(n1)), "--out", str(out), "--name", name,
                "--lease", str(LEASE), *extra]
        for node in self.cluster.nodes:
            member = f"{node.pool}/{VOLUMES[node.name]}/{self.snapshot(node.name, name)}"
            argv += ["--agent", f"{node.name}={self.agents.address(node)}",
                     "--member", f"{node.name}={member}"]
        if gate is not None:
            argv += ["--gate", str(gate)]
        proc = self.cluster.spawn(n1, argv, env={"PYTHONPATH": ROOT, "STATEHOLD_LOG_LEVEL": "INFO"},
                                  log=self.scratch / f"coord-{name}.log")
        return proc, out

    def outcome(self, proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the coordinator did not end\n{self.logs()}") from None
        assert out.exists(), f"the coordinator wrote no outcome\n{self.logs()}"
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def logs(self) -> str:
        text = "".join(f"--- agent {n.name}:\n{self.agents.log(n)}\n" for n in self.cluster.nodes)
        for log in sorted(self.scratch.glob("coord-*.log")):
            text += f"--- {log.name}:\n{log.read_text()[-3000:]}\n"
        return text

    def kept(self, node: str, group: str = GROUP) -> list[str]:
        """What this node keeps of the group: snapshot rows and files, records."""
        pool = self.engines[node].pool(self.node(node).pool)
        found = [s.name for s in pool.list_snapshots()]
        found += [f"file {f.name}" for f in pool.snapshots_dir.glob(f"{group}*")]
        if groups.read(pool, group) is not None:
            found.append(f"record {group}")
        return found

    def thawed(self) -> None:
        """Every member filesystem takes a write again (a probe from a child process,
        waited for with a deadline well past the lease)."""
        stuck = frozen_targets([str(t) for t in self.targets.values()], deadline=LEASE + 30)
        assert stuck == [], f"still frozen: {stuck}\n{self.logs()}"

    def stamp(self, node: str, group: str = GROUP) -> int:
        """The stamp in this node's member snapshot (read through a clone of it)."""
        pool = self.engines[node].pool(self.node(node).pool)
        snap = pool.get_snapshot(self.snapshot(node, group))
        clone = f"c-{group}-{node}"
        pool.create_volume(clone, snap.size, fs=snap.fs, source=Source(SourceKind.SNAPSHOT, snap.name))
        target = self.node(node).home / "mnt" / clone
        pool.mount(clone, target)
        try:
            return int((target / "stamp").read_text().split()[0])
        finally:
            pool.unmount(clone, target)
            pool.detach(clone)
            pool.delete_volume(clone)


@pytest.fixture
def world(net_cluster: Callable[..., Cluster], scratch: Path) -> Iterator[World]:
    cluster = net_cluster(2, pools=("pa", "pb"))
    agents = Agents(cluster, scratch / "ca")
    engines: dict[str, Node] = {}
    targets: dict[str, Path] = {}
    try:
        for node in cluster.nodes:
            engine = engines[node.name] = Node(node.home)
            pool = engine.pool(node.pool)
            volume = VOLUMES[node.name]
            pool.create_volume(volume, 300 * MiB, fs=FsType.XFS)
            target = node.home / "mnt" / volume
            pool.mount(volume, target)
            targets[node.name] = target
            agents.start(node)
        yield World(cluster, agents, engines, targets, scratch)
    finally:
        for t in targets.values():  # nothing of ours may stay frozen for the teardown
            frozen_targets([str(t)], deadline=LEASE + 30)
        for engine in engines.values():
            engine.close()


@pytest.fixture
def writer(world: World) -> Iterator[subprocess.Popen[bytes]]:
    started = world.scratch / "writer.started"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(world.targets["n1"] / "stamp"),
                             str(world.targets["n2"] / "stamp"), str(started)])
    try:
        wait_for(started.exists, 60, "the writer's first stamps")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_group_across_two_nodes_is_one_instant_under_a_cross_node_writer(
        world: World, writer: subprocess.Popen[bytes]) -> None:
    for round_ in range(3):
        name = f"{GROUP}{round_}"
        proc, out = world.coordinator(name)
        result = world.outcome(proc, out)
        assert result["ok"], f"{result}\n{world.logs()}"
        assert set(result["windows"]) == {"n1", "n2"}
        assert writer.poll() is None  # the writer ran through both freezes
        a, b = world.stamp("n1", name), world.stamp("n2", name)
        assert a > 0 and b <= a <= b + 1, (name, a, b)
        for node in ("n1", "n2"):
            pool = world.engines[node].pool(world.node(node).pool)
            doc = groupparts.read_part(pool, name)
            assert doc is not None and doc["attempt"] == result["attempt"]
            assert doc["nodes"] == ["n1", "n2"]
    # a retry of a taken group answers it as it is: nothing frozen, nothing new
    proc, out = world.coordinator(f"{GROUP}0")
    again = world.outcome(proc, out)
    assert again["ok"] and again["existed"], again
    world.thawed()


def test_a_coordinator_killed_between_prepare_and_commit_leaves_every_node_thawed_and_nothing_kept(
        world: World, writer: subprocess.Popen[bytes]) -> None:
    gate = world.scratch / "never"
    proc, out = world.coordinator(gate=gate)
    wait_for(Path(f"{out}.prepared").exists, 120, "every node READY")
    world.cluster.kill(proc)  # SIGKILL, by pid: nobody will COMMIT or ABORT
    world.thawed()  # each node's keeper thawed at its lease
    for node in ("n1", "n2"):
        wait_for(lambda n=node: not world.kept(n), LEASE + 30, f"{node} rolling back")  # type: ignore[misc]
    assert writer.poll() is None


def test_an_agent_killed_after_ready_makes_the_others_abort_and_thaw(world: World) -> None:
    n2 = world.node("n2")
    world.agents.arm(n2, "group.commit")
    proc, out = world.coordinator()
    world.agents.wait_reached(n2, "group.commit")
    world.agents.kill(n2)  # its keeper sees end of file and thaws
    world.agents.disarm(n2, "group.commit")
    result = world.outcome(proc, out)
    assert not result["ok"] and result["kind"] in ("Temporary", "Unavailable"), result
    world.thawed()
    assert world.kept("n1") == []  # aborted (or its committed part discarded)
    world.agents.start(n2)  # its recovery rolls back what the dead agent held
    wait_for(lambda: not world.kept("n2"), 60, "n2 rolled back")


def test_a_node_cut_off_after_ready_is_aborted_and_thaws_on_its_own(world: World) -> None:
    n2 = world.node("n2")
    gate = world.scratch / "gate"
    proc, out = world.coordinator(gate=gate, extra=("--commit-grace", "3", "--abort-timeout", "3"))
    wait_for(Path(f"{out}.prepared").exists, 120, "every node READY")
    world.cluster.link_down(n2)
    try:
        gate.touch()
        result = world.outcome(proc, out)
        assert not result["ok"] and result["kind"] in ("Temporary", "Unavailable"), result
        world.thawed()
        assert world.kept("n1") == []
        wait_for(lambda: not world.kept("n2"), LEASE + 30, "n2 rolling back by itself")
    finally:
        world.cluster.link_up(n2)


def test_the_csi_group_controller_takes_reads_and_deletes_a_group_across_nodes(world: World) -> None:
    """The CSI side (LocalGroups, as the GroupController calls it) on n1, coordinating
    through the agents with n1's own node certificate."""
    from statehold.agent import pki
    from statehold.agent.fleet import AgentFleet
    from statehold.csi.local_groups import LocalGroups
    from statehold.csi.remote_groups import GroupsAcrossNodes, StaticPoolNodes
    from tests.integration.agent.groupcoord import StaticDirectory

    world.cluster.attach_host()  # the test process is n1's plugin: it reaches the agents
    n1 = world.node("n1")
    addresses = {n.name: world.agents.address(n) for n in world.cluster.nodes}
    fleet = AgentFleet(pki.load_bundle(world.agents.certs(n1)), StaticDirectory(addresses))
    try:
        remote: GroupsAcrossNodes = fleet.group_coordinator()
        csi = LocalGroups(world.engines["n1"], "n1", remote=remote,
                          pool_nodes=StaticPoolNodes({"pa": "n1", "pb": "n2"}))
        ids = ["pa/va", "pb/vb"]
        info = csi.create("csi-group", ids, {"freezeTimeout": "5s"})
        assert info.ready and info.group_snapshot_id == "pa/csi-group"
        assert sorted(s.source_volume_id for s in info.snapshots) == ids
        again = csi.create("csi-group", ids, {"freezeTimeout": "5s"})  # a sidecar's retry
        assert again.member_ids == info.member_ids and again.created_at == info.created_at
        got = csi.get(info.group_snapshot_id)
        assert got.ready and sorted(got.member_ids) == sorted(info.member_ids)
        csi.delete(info.group_snapshot_id)
        assert world.kept("n1", "csi-group") == [] and world.kept("n2", "csi-group") == []
    finally:
        fleet.close()
    world.thawed()
