"""PostgreSQL on a two-copy volume loses its node; the promoted copy holds every transaction
committed before the last acknowledged point (issue 12).

Real parts throughout: two nodes, each a network namespace with its own pool and its own
``statehold agent serve`` (TCP, mutual TLS, certificates from the CA the operator keeps in
a Secret); the operator's reconciler (``replication_pass``, in the test process) and each
node's CSI driver (on its socket, the stage-time fence reading the record) against the
session's **real kube-apiserver** (``kube_control_plane``: CRDs, Nodes with Leases kept
fresh for the real node lifecycle controller, StoragePools, the PV, the ReplicatedVolume
record and its status written by compare-and-set on the real server).

The flow, as a user meets it:

1. CreateVolume (``replicas: 2``, ``rpo: 5s``, XFS) on node A, the PV; the operator records
   A as primary and seeds a replica on B; NodeStage + NodePublish on A; initdb, PostgreSQL.
2. Load: pgbench (TPC-B-like, 2 clients) and a ledger client committing 1, 2, 3, ... one
   at a time; after each commit returned, the client reads A's point number from A's state
   file (persisted *before* a point's snapshot is taken), so "committed before point P" is
   known from outside, with no clock.
3. C, the newest ledger id at t0; wait until B acknowledged a few points numbered after
   C's reading (so C is in each); then A's next stream is held once its snapshot is taken
   (pause point ``send.0``) and the ledger goes on a few more commits, which B cannot have.
4. Power loss on A: its agent SIGKILLed, its cable cut, every PostgreSQL process SIGKILLed
   (no shutdown, no checkpoint); its Node stops beating, and the real node lifecycle
   controller marks it not ready 40 s later: the operator promotes nothing meanwhile.
5. Failover as a user does it: the out-of-service taint on A. The operator records epoch 2
   for B first, then promotes B's copy. NodeStage + NodePublish on B, PostgreSQL starts
   (crash recovery), ``pg_amcheck --all --heapallindexed`` finds nothing, the ledger is
   1..M without a hole, with M at least every id committed before B's point and at most
   the id in flight when the held point was taken; pgbench's balances agree with its
   history (each TPC-B transaction updates all of them at once, or none).
6. A comes back: its kubelet's retried NodeStage is refused, and its copy is stale at
   epoch 2 on disk (fenced for good).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from statehold.agent import pki
from statehold.agent.fleet import AgentFleet
from statehold.controller import agent_certs
from statehold.controller.agent_directory import KubeDirectory
from statehold.errors import NotFound
from statehold.kube.client import ApiKube
from statehold.kube.kinds import EVENT, NAMESPACE, SECRET, STORAGE_POOL, Kind
from tests.e2e.replicated_pg import (
    C,
    Heartbeat,
    Ledger,
    MiB,
    World,
    csi_driver,
    pgbench,
    point_seq,
    power_off,
    stop_client,
)
from tests.e2e.test_postgres_workload import Postgres, _as_postgres, _pg_bin, _traversable
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.netns import Cluster, NetNode
from tests.integration.agent.harness import PORT, Agents
from tests.integration.scheduler.realcluster import install_crds

pytestmark = [pytest.mark.root, pytest.mark.slow]

GiB = 1024 * MiB
SCALE = 1
"""pgbench scale: 100,000 accounts."""
LEDGER_BEFORE = 30
"""Ledger commits before t0: the load is under way when C is taken."""
POINTS_UNDER_LOAD = 3
"""Points B acknowledges after t0 before the power goes."""
AFTER_HELD = 3
"""Ledger commits after A's held point was taken, before the power goes."""


@pytest.fixture
def world(kube_control_plane: ControlPlane, net_cluster: Callable[..., Cluster],
          scratch: Path) -> Iterator[World]:
    """Nodes A and B (names, pools and namespace unique to the run: the API server is the
    session's), their Node objects kept Ready, Ready StoragePools (B's with the most room),
    agents with certificates from the operator's CA Secret (replication loop every second),
    a CSI driver per node, the operator's fleet. Everything made in the API is deleted after."""
    kubeconfig = str(kube_control_plane.kubeconfig)
    install_crds(kube_control_plane.kubeconfig)
    run = secrets.token_hex(3)
    names = (f"rpg-{run}-a", f"rpg-{run}-b")
    cluster = net_cluster(2, image_size="2Gi", pools=names)
    for n, name in zip(cluster.nodes, names, strict=True):
        n.name = name  # Node, certificate and agent name (the harness's n1, n2 may be taken)
    cluster.attach_host()
    kube = ApiKube.from_kubeconfig(kubeconfig)
    ns = f"statehold-rpg-{run}"
    with contextlib.ExitStack() as stack:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        stack.callback(_delete, kube, NAMESPACE, ns)
        beat = Heartbeat(ApiKube.from_kubeconfig(kubeconfig), cluster.nodes)
        stack.callback(beat.close)
        beat.start()
        for n, free in zip(cluster.nodes, (40 * GiB, 80 * GiB), strict=True):
            kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                         "metadata": {"name": n.pool},
                         "spec": {"node": n.name, "directory": "/var/lib/statehold",
                                  "imageSize": "100Gi"}})
            stack.callback(_delete, kube, STORAGE_POOL, n.pool)
            kube.patch_status(STORAGE_POOL, n.pool, {"phase": "Ready", "capacity": 100 * GiB,
                                                     "allocatable": free})
        issuer = pki.Issuer()
        ca = agent_certs.ensure_ca(kube, ns, issuer)
        agent_certs.ensure_node_certs(kube, ns, ca, issuer, datetime.now(UTC))
        agents = Agents(cluster, scratch / "ca")
        for n in cluster.nodes:  # what the DaemonSet's agent reads from its Secret
            certs = agent_certs.read_node_certs(kube.get(
                SECRET, agent_certs.node_secret_name(n.name), ns))
            pki.write_node_files(agents.certs(n), certs.ca, pki.KeyPair(certs.cert, certs.key))
        cert, key = agent_certs.issue_operator(ca, issuer)
        fleet = AgentFleet(pki.Bundle(ca.cert, pki.KeyPair(cert, key)), KubeDirectory(kube, PORT),
                           timeout=20)
        stack.callback(fleet.close)
        for n in cluster.nodes:
            agents.start(n, interval=1.0)
        w = World(cluster, agents, kube, fleet, beat)
        for n in cluster.nodes:
            w.csi[n.name] = stack.enter_context(
                csi_driver(n, ApiKube.from_kubeconfig(kubeconfig), scratch))
        stack.callback(_forget_volumes, w)  # first on the way out: PV, record, Events
        yield w


def _forget_volumes(w: World) -> None:
    for v in w.volumes:
        w.forget(v)


def _delete(kube: ApiKube, kind: Kind, name: str) -> None:
    with contextlib.suppress(NotFound):
        kube.delete(kind, name)


@contextlib.contextmanager
def postgres_on(mnt: Path, sockdir: Path, top: Path, *, init: bool) -> Iterator[Postgres]:
    """PostgreSQL on ``mnt/pgdata`` (made by initdb when ``init``), on a private unix socket;
    stopped (immediate) on the way out unless it was killed already."""
    _traversable(mnt, top)
    data = mnt / "pgdata"
    if init:
        shutil.chown(mnt, "postgres", "postgres")
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                      "--no-sync"], env={**os.environ, "LC_ALL": "C"})
    pg = Postgres(data, sockdir)
    try:
        yield pg
    finally:
        pg.stop()


def test_postgres_survives_losing_the_primary_node_with_every_acknowledged_commit(
        world: World, scratch: Path) -> None:
    w = world
    a, b = w.cluster.nodes
    v = w.create_volume(a, f"pv-rpg-{a.name}", size=512 * MiB, replicas=2, rpo="5s")

    def replica_at(node: NetNode, after: int = 0) -> bool:
        r = w.report(node, v)
        return (r is not None and r.role == "replica" and r.point is not None
                and point_seq(r.point) > (1, after))

    w.converge(lambda: w.status(v).get("primary") == a.name and replica_at(b),
               "epoch 1 on A and a seeded replica on B")
    assert w.status(v)["epoch"] == 1

    with contextlib.ExitStack() as stack:
        mnt_a = w.publish(a, v)
        pg_a = stack.enter_context(postgres_on(mnt_a, scratch / "sock" / "a", scratch, init=True))
        pg_a.start()
        pg_a.sql("CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        _as_postgres([_pg_bin("pgbench"), "-h", str(pg_a.sockdir), "-p", "5432", "-i", "-s",
                      str(SCALE), "-q", "postgres"])
        load = pgbench(pg_a, "-n", "-c", "2", "-T", "600")  # ends when its server does
        stack.callback(stop_client, load)
        ledger = Ledger(pg_a, lambda: w.state(a, v).seq)
        stack.callback(ledger.finish)
        ledger.start()

        ledger.wait_for(LEDGER_BEFORE)
        with ledger.progress:
            c, s = ledger.last, ledger.seq_after[ledger.last]  # t0: C committed, A's seq then s
        # a few points under load: each one taken after C's commit returned
        w.converge(lambda: replica_at(b, after=s + POINTS_UNDER_LOAD - 1),
                   f"B acknowledging a point after #{s + POINTS_UNDER_LOAD - 1} (C={c})")
        w.agents.arm(a, "send.0")  # A's next stream is held once its point is taken
        w.agents.wait_reached(a, "send.0")
        with ledger.progress:
            in_flight = ledger.last + 1  # the newest commit that may precede the held point
        ledger.wait_for(in_flight + AFTER_HELD)
        assert load.poll() is None, load.stderr.read() if load.stderr else load.returncode

        # power loss on A: agent, cable, PostgreSQL; the clients lose their server
        w.agents.kill(a)
        w.cluster.link_down(a)
        power_off(pg_a)
        ledger.finish()
        load.wait(60)
        w.heartbeat.power_off(a.name)

    acked = w.report(b, v)
    assert acked is not None and acked.role == "replica" and acked.point is not None
    epoch, x = point_seq(acked.point)
    assert epoch == 1 and x >= s + POINTS_UNDER_LOAD
    committed_before = max(n for n, seq in ledger.seq_after.items() if seq < x)
    assert committed_before >= c

    # Kubernetes notices (the node lifecycle controller, 40 s after the last beat); the
    # operator meanwhile promotes nothing: an unreachable node may still be writing
    w.converge(lambda: not w.heartbeat.ready(a.name), "A marked not ready", 180)
    assert (w.status(v)["epoch"], w.status(v)["primary"]) == (1, a.name)
    # the administrator: A is off. The operator records epoch 2 first, then promotes B
    w.heartbeat.out_of_service(a.name)
    w.converge(lambda: w.status(v).get("epoch") == 2, "the failover recorded")
    assert w.status(v)["primary"] == b.name
    w.converge(lambda: (r := w.report(b, v)) is not None and (r.role, r.epoch) == ("primary", 2),
               "B's copy promoted")
    assert w.writable(v) == [b.name]
    assert any(ev.get("reason") == "FailedOver" and (ev.get("involvedObject") or {}).get("name") == v.pv
               for ev in w.kube.list(EVENT, "default"))

    mnt_b = w.publish(b, v)
    with postgres_on(mnt_b, scratch / "sock" / "b", scratch, init=False) as pg_b:
        (pg_b.data / "postmaster.pid").unlink()  # A's server was running: its pid file is A's
        pg_b.start()  # crash recovery from the WAL of the point
        _as_postgres([_pg_bin("pg_amcheck"), "-h", str(pg_b.sockdir), "-p", "5432", "--all",
                      "--install-missing", "--heapallindexed"])
        count, low, high = (int(f or 0) for f in
                            pg_b.sql("SELECT count(*), min(id), max(id) FROM ledger").split("|"))
        assert count == high and (low == 1 or count == 0), (count, low, high)  # no hole
        assert committed_before <= high <= in_flight, (c, committed_before, high, in_flight)
        assert pg_b.sql("SELECT count(*) FROM pgbench_accounts") == str(100_000 * SCALE)
        assert int(pg_b.sql("SELECT count(*) FROM pgbench_history")) > 0
        sums = pg_b.sql("SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), "
                        "(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), "
                        "(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), "
                        "(SELECT coalesce(sum(delta), 0) FROM pgbench_history)").split("|")
        assert len(set(sums)) == 1, sums
    w.unpublish(b, v)

    # A comes back rebooted (its mounts gone); its kubelet retries the stage: fenced for good
    w.cluster.link_up(a)
    w.unpublish(a, v)
    assert w.stage_code(a, v) == C.FAILED_PRECONDITION
    state = w.state(a, v)
    assert (state.role.value, state.epoch) == ("stale", 2)
