"""Moves started by a cordon of the primary's node, and the export of a retired pool, end to
end with real parts (docs/design/replication.md §9.5, §9.7): the three netns nodes of
``test_failover_e2e`` with their pools, agents (TCP, mutual TLS) and CSI drivers, the
operator's reconciler against MemoryKube.

* a cordon under writes: the move is recorded without any request, the old primary refuses
  to stage again, the final sync waits for the unstage (the drain's eviction), and the new
  primary holds every byte the workload was told was durable (sha256);
* an uncordon before the unstage: the move is cancelled, the old primary stays primary at
  its epoch and stages again;
* a retired pool: its replicated copy re-placed, a single-copy volume blocking the export
  (named in the condition) until it is deleted, then the pool exported by its node's agent
  (unmounted, its image detached, forgotten by the node) and ``Exported`` while the node's
  CSI driver still has it open (it lets go: the export's release protocol); asking again
  is a success.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from statehold.csi.gen import csi_pb2 as pb
from statehold.errors import NotFound
from statehold.kube.kinds import NODE, PV, STORAGE_POOL
from tests.integration.agent import test_failover_e2e as e2e
from tests.integration.agent.harness import scribble
from tests.integration.agent.test_failover_e2e import GiB, Volume, World, replicated, write_device

pytestmark = [pytest.mark.root, pytest.mark.slow]

C = grpc.StatusCode
world = e2e.world
"""The fixture of ``test_failover_e2e``: three netns nodes with pools pool-a/b/c, their agents,
a CSI driver per node, MemoryKube and the operator's fleet."""


def cordon(w: World, name: str, on: bool = True) -> None:
    """``kubectl cordon`` (``kubectl drain`` begins so, then evicts the pods)."""
    w.kube.patch(NODE, name, {"spec": {"unschedulable": True if on else None}})


def reasons(w: World, v: Volume) -> list[str]:
    return [e["reason"] for e in w.kube.events_for(w.record(v))]


def retiring(w: World, pool: str) -> dict[str, Any]:
    conds = (w.kube.get(STORAGE_POOL, pool).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Retiring"), {})


# -- §9.5: a cordon of the primary's node -------------------------------------------------------

def test_a_cordon_under_writes_moves_the_volume_and_loses_nothing_acknowledged(
        world: World) -> None:
    w = world
    n1, n2, _n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-cordon", replicas=2)
    w.converge(lambda: replicated(w, v, n2), "a seeded replica on n2")
    device = w.stage(n1, v)
    stop = threading.Event()
    written: list[int] = []

    def workload() -> None:
        seed = 200
        while not stop.is_set():
            write_device(device, 1, seed=seed)  # each MiB is fsynced: acknowledged
            written.append(seed)
            seed += 1

    writer = threading.Thread(target=workload, name="workload")
    started = time.time()
    writer.start()
    try:
        w.converge(lambda: len(written) >= 8 and (r := w.report(n2, v)) is not None
                   and (r.point_time or 0) > started, "a point taken under writes acknowledged")
        cordon(w, "n1")
        w.converge(lambda: (w.status(v).get("moving") or {}).get("to") == "n2",
                   "the move recorded because of the cordon")
        assert "move" not in w.record(v)["spec"]  # nobody asked: the cordon is the reason
        for _ in range(3):  # the pod still writes: the final sync waits
            w.reconcile()
        assert (w.status(v)["epoch"], w.status(v)["primary"]) == (1, "n1")
        assert w.stage_code(n1, v) == C.FAILED_PRECONDITION  # kubelet's retry is refused now
    finally:
        stop.set()
        writer.join(60)
    assert len(written) >= 8
    w.unstage(n1, v)  # the drain evicted the pod: the volume is unstaged
    final = w.copy_sha(n1, v)
    w.converge(lambda: w.status(v)["primary"] == "n2", "the move done")
    assert w.status(v)["epoch"] == 2 and "moving" not in w.status(v)
    assert w.copy_sha(n2, v) == final  # every write the workload was told was durable
    assert {"MoveStarted", "Moved"} <= set(reasons(w, v))
    w.stage(n2, v)
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION
    w.converge(lambda: (r := w.report(n1, v)) is not None and r.role == "replica"
               and w.copy_sha(n1, v) == final, "the old primary a replica of the new one")
    for _ in range(2):  # n1 is still cordoned, but no longer the primary: nothing moves
        w.reconcile()
    assert (w.status(v)["epoch"], w.status(v)["primary"]) == (2, "n2")
    assert w.writable(v) == ["n2"]
    w.unstage(n2, v)


def test_an_uncordon_before_the_unstage_cancels_the_move(world: World) -> None:
    w = world
    n1, n2, _n3 = w.cluster.nodes
    v = w.create_volume(n1, "pv-uncordon", replicas=2)
    w.converge(lambda: replicated(w, v, n2), "a seeded replica on n2")
    device = w.stage(n1, v)
    write_device(device, 4, seed=31)
    cordon(w, "n1")
    w.converge(lambda: (w.status(v).get("moving") or {}).get("to") == "n2", "the move recorded")
    assert w.stage_code(n1, v) == C.FAILED_PRECONDITION  # moving: n1 stages nothing new
    cordon(w, "n1", on=False)  # the maintenance is called off; the pod never left
    w.converge(lambda: "moving" not in w.status(v), "the move cancelled")
    assert (w.status(v)["epoch"], w.status(v)["primary"]) == (1, "n1")
    assert "MoveCancelled" in reasons(w, v)
    assert w.stage(n1, v) == device  # n1 serves as before, at the same epoch
    write_device(device, 4, seed=32)
    acked = w.copy_sha(n1, v)
    w.converge(lambda: w.copy_sha(n2, v) == acked, "replication goes on to n2")
    assert w.writable(v) == ["n1"]
    w.unstage(n1, v)


# -- §9.7: a retired pool exported ---------------------------------------------------------------

def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def loops_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def test_a_retired_pool_is_exported_once_nothing_is_left_in_it(world: World) -> None:
    w = world
    n1, n2, n3 = w.cluster.nodes
    w.kube.patch_status(STORAGE_POOL, "pool-b", {"allocatable": 40 * GiB})  # n3 has most room
    v = w.create_volume(n1, "pv-exp", replicas=2)        # primary on n1, replica on n3
    solo = w.create_volume(n3, "pv-solo", replicas=1)    # one copy, in pool-c
    scribble(w.copy_file(n1, v), 12, seed=41)
    data = w.copy_sha(n1, v)
    w.converge(lambda: replicated(w, v, n3), "a replica on n3")
    mountpoint = n3.home / "pools" / "pool-c"
    image = pool_image(mountpoint)
    assert mounted(mountpoint) and loops_of(image) != ""

    w.kube.patch(STORAGE_POOL, "pool-c", {"spec": {"decommission": True}})
    w.converge(lambda: retiring(w, "pool-c").get("reason") == "ExportBlocked",
               "the replica re-placed; the single-copy volume blocks the export", 400)
    cond = retiring(w, "pool-c")
    assert solo.pv in cond["message"] and "single-copy" in cond["message"]
    assert mounted(mountpoint)
    w.converge(lambda: replicated(w, v, n2), "the new replica on n2 current")
    assert sorted(c["node"] for c in w.status(v)["copies"]) == ["n1", "n2"]
    assert w.copy_sha(n2, v) == data and not w.copy_file(n3, v).exists()

    # the single-copy volume is deleted (backed up and restored elsewhere, say)
    w.csi["n3"].controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=solo.handle))
    w.kube.delete(PV, solo.pv)
    # n3's agent and its node plugin (here in the test process) both have pool-c open: the
    # export's release protocol makes both let go (docs/design/pool-metadata.md, "Export")
    assert w.csi["n3"].engine.pool("pool-c").list_volumes() == []
    try:
        w.converge(lambda: retiring(w, "pool-c").get("reason") == "Exported", "pool-c exported")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {retiring(w, 'pool-c')}\n--- agent log of n3:\n"
                             f"{w.agents.log(n3)}") from None
    assert not mounted(mountpoint)
    assert loops_of(image) == ""   # its image detached...
    assert image.stat().st_size > 0  # ...and kept: an export is not a delete
    with pytest.raises(NotFound):  # the node plugin, still serving, no longer has the pool
        w.csi["n3"].engine.pool("pool-c")
    pools = w.cluster.statehold(n3, "pool", "get", "--home", str(n3.home), "-o", "json")
    assert "pool-c" not in pools
    assert "Exported" in [e["reason"] for e in w.kube.events_for(
        w.kube.get(STORAGE_POOL, "pool-c"))]
    w.fleet.export_pool("n3", "pool-c")  # again: a pool already exported is a success
    for _ in range(2):
        w.reconcile()
    assert retiring(w, "pool-c")["reason"] == "Exported"
    assert w.copy_sha(n1, v) == w.copy_sha(n2, v) == data
    assert w.record(v)["status"]["primary"] == "n1"


def pool_image(mountpoint: Path) -> Path:
    """The image file behind the pool mounted at ``mountpoint`` (its loop device's backing
    file)."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mountpoint)],
                            capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    return Path(Path(f"/sys/block/{Path(source).name}/loop/backing_file").read_text().strip())
