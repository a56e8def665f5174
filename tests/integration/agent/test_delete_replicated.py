"""Deleting a replicated volume's PV leaves nothing on any node (issue 12; the DeleteVolume
rule of csi/replicated.py), with the real parts of ``test_failover_e2e``: three netns nodes,
their agents over mTLS, the operator's reconciler, a CSI driver per node on its socket.

external-provisioner may send DeleteVolume to the plugin of any node the PV's affinity
admits (every copy holder carries the copy label). A plugin that holds no copy, or only a
replica, answered NotFound — success — and the primary's copy stayed, with its point
snapshots and replication state; so did the primary's point snapshots and state when the
call did reach it (the engine deleted the volume file only). Now only the record's
primary's node deletes, and it deletes the copy whole; the operator releases the others
once the PV is gone. Checked on disk and in each pool's metadata, on every node.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from statehold.csi.gen import csi_pb2 as pb
from statehold.engine.node import Node
from statehold.kube.kinds import PV, REPLICATED_VOLUME
from statehold.replication.points import snapshot_name
from tests.fixtures.netns import NetNode
from tests.integration.agent import test_failover_e2e as e2e
from tests.integration.agent.harness import scribble
from tests.integration.agent.test_failover_e2e import Volume, World, replicated

world = e2e.world
"""The fixture of ``test_failover_e2e`` (agents, operator's reconciler, CSI drivers)."""

pytestmark = e2e.pytestmark

C = grpc.StatusCode


def delete_code(w: World, node: NetNode, v: Volume) -> grpc.StatusCode:
    """DeleteVolume through ``node``'s plugin, as external-provisioner sends it."""
    try:
        w.csi[node.name].controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.handle))
    except grpc.RpcError as exc:
        return exc.code()
    return C.OK


def leftovers(w: World, node: NetNode, v: Volume) -> list[str]:
    """Whatever of ``v`` is still on ``node``: files (volume, point snapshots, replication
    state and work file) and rows of the pool's metadata."""
    pool_dir = node.home / "pools" / node.pool
    prefix = snapshot_name(v.name, "e1-1").removesuffix("e1-1")
    found: list[Path] = [p for p in (pool_dir / "volumes" / f"{v.name}.img",
                                     pool_dir / ".statehold" / "replication" / f"{v.name}.json",
                                     pool_dir / ".statehold" / "replication" / f"{v.name}.work")
                         if p.exists()]
    found += sorted((pool_dir / "snapshots").glob(f"{prefix}*"))
    out = [str(p.relative_to(node.home)) for p in found]
    engine: Node = w.csi[node.name].engine
    engine.refresh()
    pool = engine.pool(node.pool)
    out += [f"volume row {x.name}" for x in pool.list_volumes() if x.name == v.name]
    out += [f"snapshot row {s.name}" for s in pool.list_snapshots() if s.name.startswith(prefix)]
    return out


def everything_of(w: World, v: Volume) -> dict[str, list[str]]:
    return {n.name: leftovers(w, n, v) for n in w.cluster.nodes}


def lasting(held: dict[str, list[str]], v: Volume) -> dict[str, list[str]]:
    """``held`` without the replication point snapshots: replication cycles keep making a
    new point and dropping the old one while the test runs, so which points exist at a
    given moment is not the test's to fix; the volume, its state and its rows are."""
    prefix = snapshot_name(v.name, "e1-1").removesuffix("e1-1")
    return {n: [x for x in items if prefix not in x] for n, items in held.items()}


def retire(w: World, v: Volume) -> None:
    """What external-provisioner does after DeleteVolume succeeded: the PV goes; then the
    operator retires the record and releases the other copies."""
    w.kube.delete(PV, v.pv)
    w.converge(lambda: not any(r["metadata"]["name"] == v.pv
                               for r in w.kube.list(REPLICATED_VOLUME)), "the record retired")


def test_only_the_primary_deletes_and_no_copy_is_left_anywhere(world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-del", replicas=2)  # n3 holds nothing of it
    scribble(w.copy_file(n1, v), 8, seed=5)
    w.converge(lambda: replicated(w, v, n2), "a replica holding the primary's bytes")
    held = everything_of(w, v)
    assert held[n1.name] and held[n2.name] and not held[n3.name]
    assert any("/snapshots/" in p for p in held[n1.name] + held[n2.name])  # points to leak

    # the provisioner of a replica's node, or of a node without a copy: refused, not
    # "deleted" while the primary's copy stays
    assert delete_code(w, n2, v) == C.FAILED_PRECONDITION
    assert delete_code(w, n3, v) == C.FAILED_PRECONDITION
    after = everything_of(w, v)
    assert lasting(after, v) == lasting(held, v)
    # and both copies still have a replication point (the refusals deleted none of them)
    assert all(any("/snapshots/" in p for p in after[n.name]) for n in (n1, n2))
    # the primary's node: the copy goes whole, and a retry is a success
    assert delete_code(w, n1, v) == C.OK
    assert leftovers(w, n1, v) == []
    assert delete_code(w, n1, v) == C.OK
    retire(w, v)
    assert everything_of(w, v) == {n.name: [] for n in w.cluster.nodes}


def test_after_a_move_the_new_primary_deletes_though_the_handle_names_the_old_pool(
        world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-del-moved", replicas=2)
    scribble(w.copy_file(n1, v), 8, seed=6)
    w.converge(lambda: replicated(w, v, n2), "a replica on n2")
    w.kube.patch(REPLICATED_VOLUME, v.pv, {"spec": {"move": {"to": "n2"}}})
    w.converge(lambda: w.status(v)["primary"] == "n2", "the move done")
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica",
               "the old primary a replica")
    held = everything_of(w, v)
    # the handle names pool-a, which is n1's: n1 holds only a replica now
    assert v.handle.startswith(f"{n1.pool}/")
    assert delete_code(w, n1, v) == C.FAILED_PRECONDITION
    assert delete_code(w, n3, v) == C.FAILED_PRECONDITION
    assert lasting(everything_of(w, v), v) == lasting(held, v)
    assert delete_code(w, n2, v) == C.OK  # its copy lives in pool-b under the same name
    assert leftovers(w, n2, v) == []
    retire(w, v)
    assert everything_of(w, v) == {n.name: [] for n in w.cluster.nodes}
