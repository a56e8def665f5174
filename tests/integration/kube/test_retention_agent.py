"""Retention and gc as the node agent runs them: real engine pool (loop devices, XFS,
reflinks), real directory repository, the in-memory API with our CRD admission, handlers
called as kopf and the tickers call them.

What a user relies on: a schedule's prune removes only the backups the schedule made (a
manual VolumeBackup and its backup survive, so does another schedule's); the VolumeBackups
whose backup was pruned are deleted with it, no others; a prune that meets a busy
repository is retried and then applied; a backup forgotten by hand loses its object at the
next prune; gc in the cluster frees the pruned backups' space, and every kept backup still
restores bit for bit.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.collecting import forget
from statehold.backup.locks import Lock
from statehold.backup.packs import INDEX_PREFIX, decode_index
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.backup.retention import Item, Policy, apply
from statehold.controller import pruning, target_gc
from statehold.controller.backup_runner import open_repository
from statehold.controller.backups import assign_backup, run_backup
from statehold.controller.conditions import find
from statehold.controller.pools import reconcile_pool
from statehold.controller.schedules import reconcile_schedule
from statehold.controller.targets import resolve_target
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.kube.kinds import BACKUP_SCHEDULE, BACKUP_TARGET, STORAGE_POOL, VOLUME_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class

pytestmark = pytest.mark.root
NODE = "n1"
VOLUME_SIZE = 32 * MiB


@pytest.fixture
def cluster(memory_kube: MemoryKube, node: Node, engine_home: Path, scratch: Path,
            fake_clock: Any) -> MemoryKube:
    """A Ready pool on n1 holding one block volume behind PVC ``data``, a directory target."""
    obj = memory_kube.create({
        "apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "fast"},
        "spec": {"node": NODE, "directory": str(engine_home / "pool-images"), "imageSize": "1Gi"}})
    assert reconcile_pool(memory_kube, obj, node, NODE, fake_clock).outcome == "done"
    assert memory_kube.get(STORAGE_POOL, "fast")["status"]["phase"] == "Ready"
    node.pool("fast").create_volume("pvc-data", VOLUME_SIZE, mode=VolumeMode.BLOCK, fs=None)
    secret(memory_kube, "pw", password="retention password")
    path_target(memory_kube, path=str(scratch / "repo"))
    storage_class(memory_kube)
    bound_pvc(memory_kube, "data", node=NODE, pool="fast", volume="pvc-data", size="32Mi",
              labels={"backup": "nightly"})
    return memory_kube


def write_generation(node: Node, generation: int) -> str:
    """4 MiB of content unique to this generation, in place at the same offset (so a
    pruned generation's chunks are its own), plus a marker; the volume's sha256."""
    path = node.pool("fast").get_volume("pvc-data").path
    fd = os.open(path, os.O_WRONLY)
    try:
        seed = hashlib.sha256(f"generation {generation}".encode()).digest()
        os.pwrite(fd, b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                               for i in range(4 * MiB // 32)), 8 * MiB)
        os.pwrite(fd, f"generation {generation}\n".encode(), 0)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(kube: MemoryKube, node: Node, name: str, clock: Any) -> dict[str, Any]:
    """The cluster side, then this node's agent, as kopf would call them."""
    assert assign_backup(kube, kube.get(VOLUME_BACKUP, name, NS), clock).outcome == "done"
    result = run_backup(kube, kube.get(VOLUME_BACKUP, name, NS), node, NODE, clock)
    assert result.outcome == "done", result
    return kube.get(VOLUME_BACKUP, name, NS)


def manual(kube: MemoryKube, node: Node, name: str, clock: Any) -> dict[str, Any]:
    kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeBackup",
                 "metadata": {"name": name, "namespace": NS},
                 "spec": {"persistentVolumeClaimName": "data", "target": "t"}})
    return run(kube, node, name, clock)


def schedule(kube: MemoryKube, name: str, retention: dict[str, Any]) -> None:
    kube.create({"apiVersion": "statehold.io/v1alpha1", "kind": "BackupSchedule",
                 "metadata": {"name": name, "namespace": NS},
                 "spec": {"schedule": "0 3 * * *", "target": "t", "retention": retention,
                          "selector": {"matchLabels": {"backup": "nightly"}}}})


def slot(kube: MemoryKube, node: Node, name: str, clock: Any) -> dict[str, Any]:
    """Advance to the schedule's next 03:00 slot, let it create its VolumeBackup, run it."""
    clock.advance(days=1)
    assert reconcile_schedule(kube, kube.get(BACKUP_SCHEDULE, name, NS), clock).outcome == "done"
    made = kube.get(BACKUP_SCHEDULE, name, NS)["status"]["lastBackup"]
    return run(kube, node, made, clock)


def names(kube: MemoryKube) -> set[str]:
    return {o["metadata"]["name"] for o in kube.list(VOLUME_BACKUP, NS)}


def repo_of(kube: MemoryKube) -> Repository:
    return open_repository(resolve_target(kube, NS, "t"))


def indexed_packs(repo: Repository) -> set[str]:
    """The packs (hex ids) the repository's index objects name, read from the store."""
    return {pack.hex() for info in repo.store.list(INDEX_PREFIX)
            for _cid, pack, _off, _len in decode_index(repo.get_blob(info.key), info.key)}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), type_)
    assert cond is not None, obj.get("status")
    return cond


def test_a_schedules_prune_keeps_manual_backups_and_deletes_exactly_the_objects_it_pruned(
        cluster: MemoryKube, node: Node, fake_clock: Any, scratch: Path) -> None:
    kube = cluster
    sha = {"by-hand": write_generation(node, 1)}
    by_hand = manual(kube, node, "by-hand", fake_clock)
    schedule(kube, "nightly", {"keepDaily": 2})
    schedule(kube, "weekly", {"keepLast": 5})
    made = []
    for gen in range(2, 6):  # four nightly runs; a weekly run after the first
        sha[f"n{gen}"] = write_generation(node, gen)
        made.append(slot(kube, node, "nightly", fake_clock))
        if gen == 2:
            weekly = slot(kube, node, "weekly", fake_clock)
            kube.patch(BACKUP_SCHEDULE, "weekly", {"spec": {"suspend": True}}, NS)
    repo = repo_of(kube)
    ids = set(repo.backup_ids())
    # calendar retention on real manifests made seconds apart: keepDaily 2 keeps the newest
    # of the (at most two) UTC days they span; the engine's decision, recomputed here from
    # the ids' instants, is what the repository and the objects both show. An id names its
    # second only, and two runs can fall in one second: they were made in list order, so
    # the order breaks the tie as the manifests' exact creation times did
    wanted = set(apply(Policy(daily=2), [
        Item(m["status"]["backupId"], "v", calendar.timegm(time.strptime(
            m["status"]["backupId"][:16], "%Y%m%dT%H%M%SZ")) + i / 1000)
        for i, m in enumerate(made)]).keep)
    newest = made[-1]
    assert newest["status"]["backupId"] in wanted and len(wanted) <= 2
    assert {m["status"]["backupId"] for m in made} & ids == wanted
    kept_objects = {m["metadata"]["name"] for m in made if m["status"]["backupId"] in wanted}
    assert names(kube) == {"by-hand", weekly["metadata"]["name"]} | kept_objects
    # the manual backup and the other schedule's are untouched, and still restore
    assert {by_hand["status"]["backupId"], weekly["status"]["backupId"]} <= ids
    assert repo.load_manifest(by_hand["status"]["backupId"]).origin == ""
    assert repo.load_manifest(newest["status"]["backupId"]).origin == f"schedule/{NS}/nightly"
    out = scratch / "by-hand.img"
    restore_image(repo, by_hand["status"]["backupId"], out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha["by-hand"]
    # what the user sees: the condition and an Event naming what went
    cond = condition(newest, "Retention")
    assert (cond["status"], cond["reason"]) == ("True", "Applied")
    pruned = " ".join(e["message"] for o in made  # Events outlive the deleted objects
                      for e in kube.events_for(o) if e["reason"] == "Pruned")
    for m in made:
        if m["status"]["backupId"] not in wanted:
            assert m["status"]["backupId"] in pruned and m["metadata"]["name"] in pruned


def test_a_prune_that_meets_a_busy_repository_is_retried_then_applied(
        cluster: MemoryKube, node: Node, fake_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kube = cluster
    schedule(kube, "nightly", {"keepLast": 1})
    write_generation(node, 1)
    first = slot(kube, node, "nightly", fake_clock)
    write_generation(node, 2)
    fake_clock.advance(days=1)
    reconcile_schedule(kube, kube.get(BACKUP_SCHEDULE, "nightly", NS), fake_clock)
    second_name = kube.get(BACKUP_SCHEDULE, "nightly", NS)["status"]["lastBackup"]
    assign_backup(kube, kube.get(VOLUME_BACKUP, second_name, NS), fake_clock)
    repo = repo_of(kube)
    # the backup commits under a shared lock; the prune after it needs the exclusive one,
    # which gc (here: the test) holds between the two: the prune is deferred, not dropped
    real_prune = pruning.prune

    def prune_while_busy(*args: Any, **kw: Any) -> Any:
        with Lock(repo, "exclusive"):  # a real holder of the real lock, e.g. a gc
            return real_prune(*args, **kw)

    monkeypatch.setattr(pruning, "prune", prune_while_busy)
    result = run_backup(kube, kube.get(VOLUME_BACKUP, second_name, NS), node, NODE, fake_clock)
    monkeypatch.setattr(pruning, "prune", real_prune)
    second = kube.get(VOLUME_BACKUP, second_name, NS)
    assert second["status"]["phase"] == "Completed"
    assert result.outcome == "retry" and result.retry_after > 0
    cond = condition(second, "Retention")
    assert (cond["status"], cond["reason"]) == ("False", "PruneDeferred")
    assert first["status"]["backupId"] in repo.backup_ids()  # nothing removed yet
    assert names(kube) == {first["metadata"]["name"], second_name}
    # kopf calls the handler again: the Completed backup's retention is applied now
    assert run_backup(kube, second, node, NODE, fake_clock).outcome == "done"
    assert first["status"]["backupId"] not in repo.backup_ids()
    assert names(kube) == {second_name}
    assert condition(kube.get(VOLUME_BACKUP, second_name, NS), "Retention")["status"] == "True"
    # and only once
    assert run_backup(kube, kube.get(VOLUME_BACKUP, second_name, NS), node, NODE,
                      fake_clock).outcome == "skipped"


def test_a_backup_forgotten_by_hand_loses_its_object_at_the_next_prune(
        cluster: MemoryKube, node: Node, fake_clock: Any) -> None:
    kube = cluster
    schedule(kube, "nightly", {"keepLast": 3})
    made = []
    for gen in range(1, 4):
        write_generation(node, gen)
        made.append(slot(kube, node, "nightly", fake_clock))
    forget(repo_of(kube), made[0]["status"]["backupId"])  # `statehold backup forget`
    assert made[0]["metadata"]["name"] in names(kube)
    write_generation(node, 4)
    newest = slot(kube, node, "nightly", fake_clock)
    # keepLast 3 keeps made[1], made[2] and the new one; made[0]'s object followed its backup
    assert names(kube) == {m["metadata"]["name"] for m in (made[1], made[2], newest)}


def test_gc_in_the_cluster_frees_what_the_prune_left_and_reports_it(
        cluster: MemoryKube, node: Node, fake_clock: Any, scratch: Path) -> None:
    kube = cluster
    sha = {"by-hand": write_generation(node, 1)}
    by_hand = manual(kube, node, "by-hand", fake_clock)
    schedule(kube, "nightly", {"keepLast": 1})
    made = []
    for gen in (2, 3):
        sha[f"n{gen}"] = write_generation(node, gen)
        made.append(slot(kube, node, "nightly", fake_clock))
    repo = repo_of(kube)
    assert made[0]["status"]["backupId"] not in repo.backup_ids()
    assert repo.config.version == 2  # the operator creates format 2 repositories
    pack_dir = scratch / "repo" / "packs"  # format 2: chunks live in packs (format §11.2)
    before = sum(p.stat().st_size for p in pack_dir.rglob("*") if p.is_file())
    packs_before = {p.name for p in pack_dir.rglob("*") if p.is_file()}

    kube.patch(BACKUP_TARGET, "t", {"spec": {"gc": {"schedule": "30 4 * * *", "graceSeconds": 0}}}, NS)
    fake_clock.advance(days=1)
    target_gc.tick(kube, kube.get(BACKUP_TARGET, "t", NS), fake_clock)
    asked = kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]
    assert (asked["phase"], asked["node"]) == ("Pending", NODE)
    # busy repository: the request stays Pending and is tried at the next pass
    with Lock(repo, "shared"):
        assert target_gc.gc_pass(kube, NODE, fake_clock) == {f"{NS}/t": "Pending"}
    assert kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]["phase"] == "Pending"
    assert target_gc.gc_pass(kube, "n2", fake_clock) == {}  # not the other agent's
    assert target_gc.gc_pass(kube, NODE, fake_clock) == {f"{NS}/t": "Completed"}

    got = kube.get(BACKUP_TARGET, "t", NS)
    gc = got["status"]["gc"]
    after = sum(p.stat().st_size for p in pack_dir.rglob("*") if p.is_file())
    packs_after = {p.name for p in pack_dir.rglob("*") if p.is_file()}
    assert packs_before - packs_after  # the pruned generation's pack was deleted
    # no index object names a deleted pack (gc rewrote the index before deleting)
    assert indexed_packs(repo) <= packs_after
    assert gc["phase"] == "Completed" and gc["node"] == NODE
    assert gc["bytesFreed"] == before - after and gc["bytesFreed"] >= 4 * MiB  # generation 2
    assert gc["chunksDeleted"] >= 4 and gc["chunksInGrace"] == 0 and gc["damagedBackups"] == 0
    assert gc["durationSeconds"] >= 0 and gc["completionTime"] and gc["startTime"]
    assert [e["reason"] for e in kube.events_for(got)].count("GarbageCollected") == 1
    assert not list(repo.store.list("locks/"))  # the exclusive lock was released
    # every kept backup is whole
    for vb, key in ((by_hand, "by-hand"), (made[1], "n3")):
        out = scratch / f"{key}.img"
        restore_image(repo, vb["status"]["backupId"], out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == sha[key]
    # a second run frees nothing more
    kube.patch_status(BACKUP_TARGET, "t", {"gc": {"phase": "Pending"}}, NS)
    assert target_gc.gc_pass(kube, NODE, fake_clock) == {f"{NS}/t": "Completed"}
    assert kube.get(BACKUP_TARGET, "t", NS)["status"]["gc"]["bytesFreed"] == 0
