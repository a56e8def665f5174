"""A StatefulSet backed up as one unit and restored as its claims, on a real engine (loop
devices, XFS, reflinks, the freeze keeper) with the in-memory API and a real directory
repository.

There is no kubelet here, so the hooks' exec goes to a local process instead of a
container, through the same facade call (``MemoryKube.on_exec``): the command runs on this
host with its working directory in the pod's volume, so what a pre-hook writes is in the
backup and what a post-hook writes is not. The engine's fault hook logs the group
snapshot's steps into the same ordered log as the hooks: every pre-hook must come before
the freeze is asked for, every post-hook after the thaw.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.dirstore import DirectoryStore
from statehold.backup.groupmanifest import load_group
from statehold.backup.repository import Repository
from statehold.controller.backups import NODE_LABEL
from statehold.controller.conditions import find
from statehold.controller.statefulset_backups import assign_set_backup, group_name, run_set_backup
from statehold.controller.statefulset_restores import assign_set_restore, run_set_restore
from statehold.engine.node import Node
from statehold.engine.types import GiB, MiB, PoolSpec
from statehold.kube.execs import ExecCall
from statehold.kube.facade import ExecResult
from statehold.kube.kinds import PV, PVC, STATEFUL_SET_BACKUP, STATEFUL_SET_RESTORE
from statehold.kube.memory import MemoryKube
from tests.fixtures.engine import close_node
from tests.unit.controller.cluster import NS, bound_pvc, path_target, secret, storage_class
from tests.unit.controller.statefulset_cluster import hook, running_pods, statefulset

pytestmark = pytest.mark.root
NODE = "n1"
API = "statehold.io/v1alpha1"
PASSWORD = "correct horse battery"
GROUP_STEPS = ("group.freezing", "group.frozen", "group.cloned", "group.thawed")


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    cond = find((obj.get("status") or {}).get("conditions"), "Ready")
    assert cond is not None
    return cond


class Host:
    """The node: a real engine whose fault hook logs group steps, three mounted XFS volumes
    (one per pod), and the exec stand-in that runs hook commands as local processes."""

    def __init__(self, home: Path, scratch: Path) -> None:
        self.log: list[str] = []
        self.node = Node(home, fault_hook=self._step)
        self.pool = self.node.create_pool(PoolSpec(name="fast", image_size=1 * GiB))
        self.mounts: dict[str, Path] = {}
        for o in range(3):
            self.pool.create_volume(f"pvc-data-{o}", 64 * MiB)
            target = scratch / "mnt" / f"db-{o}"
            target.mkdir(parents=True)
            self.pool.mount(f"pvc-data-{o}", target)
            self.mounts[f"db-{o}"] = target

    def _step(self, step: str) -> None:
        if step in GROUP_STEPS:
            self.log.append(step)

    def exec(self, call: ExecCall) -> ExecResult:
        """The pod's container: a local process in the pod's volume."""
        self.log.append(f"exec {call.pod} {call.command[-1]}")
        try:
            done = subprocess.run(list(call.command), cwd=self.mounts[call.pod], capture_output=True,
                                  text=True, timeout=call.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            return ExecResult(None, str(exc.stdout or ""), str(exc.stderr or ""))
        return ExecResult(done.returncode, done.stdout, done.stderr)

    def write(self, pod: str, name: str, seed: int, size: int = 3 * MiB) -> str:
        block = hashlib.sha256(f"{pod}/{name}/{seed}".encode()).digest() * (size // 32)
        path = self.mounts[pod] / name
        path.write_bytes(block)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return hashlib.sha256(block).hexdigest()


@pytest.fixture
def host(engine_home: Path, scratch: Path) -> Iterator[Host]:
    h = Host(engine_home, scratch)
    try:
        yield h
    finally:
        close_node(h.node)


@pytest.fixture
def cluster(memory_kube: MemoryKube, host: Host, scratch: Path) -> MemoryKube:
    secret(memory_kube, "pw", password=PASSWORD)
    path_target(memory_kube, path=str(scratch / "repo"))
    storage_class(memory_kube)
    statefulset(memory_kube)
    for o in range(3):
        bound_pvc(memory_kube, f"data-db-{o}", node=NODE, pool="fast", volume=f"pvc-data-{o}",
                  size="64Mi")
    running_pods(memory_kube)
    memory_kube.on_exec(host.exec)
    return memory_kube


HOOKS = {"pre": [hook("mark", "sh", "-c", "echo before > hook.txt && sync && echo pre")],
         "post": [hook("after", "sh", "-c", "echo after > post.txt && echo post")]}


def back_up(kube: MemoryKube, host: Host, fake_clock: Any, name: str) -> dict[str, Any]:
    kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                 "metadata": {"name": name, "namespace": NS},
                 "spec": {"statefulSetName": "db", "target": "t", "hooks": HOOKS}})
    assert assign_set_backup(kube, kube.get(STATEFUL_SET_BACKUP, name, NS), fake_clock).outcome == "done"
    result = run_set_backup(kube, kube.get(STATEFUL_SET_BACKUP, name, NS), host.node, NODE, fake_clock)
    assert result.outcome == "done", result
    return kube.get(STATEFUL_SET_BACKUP, name, NS)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_set_is_backed_up_at_one_instant_with_hooks_and_restored_as_its_claims(
        cluster: MemoryKube, host: Host, scratch: Path, fake_clock: Any) -> None:
    first = {pod: host.write(pod, "data.bin", 1) for pod in host.mounts}
    b1 = back_up(cluster, host, fake_clock, "b1")

    # every pre-hook before the freeze was asked for, every post-hook after the thaw
    assert host.log == ["exec db-0 echo before > hook.txt && sync && echo pre",
                        "exec db-1 echo before > hook.txt && sync && echo pre",
                        "exec db-2 echo before > hook.txt && sync && echo pre",
                        "group.freezing", "group.frozen", "group.cloned", "group.thawed",
                        "exec db-0 echo after > post.txt && echo post",
                        "exec db-1 echo after > post.txt && echo post",
                        "exec db-2 echo after > post.txt && echo post"]
    st = b1["status"]
    assert (st["phase"], st["consistency"], ready(b1)["status"]) == ("Completed", "Application", "True")
    assert [h["output"] for h in st["hooks"]] == ["pre\n"] * 3 + ["post\n"] * 3
    assert st["groupSnapshot"] == group_name(b1["metadata"]["uid"])
    assert all(m["backupId"] and m["snapshot"] for m in st["members"])

    repo = Repository.open(DirectoryStore(scratch / "repo"), PASSWORD)
    group = load_group(repo, st["groupBackupId"])
    assert (group.set_name, group.replicas, group.namespace, group.consistency) == (
        "db", 3, NS, "application")
    assert [(m.ordinal, m.claim, m.backup_id) for m in group.members] == [
        (o, f"data-db-{o}", st["members"][o]["backupId"]) for o in range(3)]
    assert [t.name for t in group.templates] == ["data"] and group.selector == {"app": "db"}
    # each member's snapshot is the group's, kept as its next parent
    for o in range(3):
        assert [s.name for s in host.pool.list_snapshots(f"pvc-data-{o}")] == [
            st["members"][o]["snapshot"]]

    # a second backup after a change: incremental, and the spent group record goes
    for pod in host.mounts:
        host.write(pod, "data.bin", 2)
    b2 = back_up(cluster, host, fake_clock, "b2")
    assert [m["parentBackupId"] for m in b2["status"]["members"]] == [
        m["backupId"] for m in st["members"]]
    assert [g.name for g in host.node.list_snapshot_groups()] == [b2["status"]["groupSnapshot"]]

    # restore the first group into a new namespace, as the claims of the same set
    secret_in(cluster, "restored")
    cluster.create({"apiVersion": API, "kind": "BackupTarget",
                    "metadata": {"name": "same-repo", "namespace": "restored"},
                    "spec": {"path": {"path": str(scratch / "repo")},
                             "passwordSecretRef": {"name": "pw"}}})
    r = cluster.create({"apiVersion": API, "kind": "StatefulSetRestore",
                        "metadata": {"name": "r1", "namespace": "restored"},
                        "spec": {"groupBackupId": st["groupBackupId"], "target": "same-repo",
                                 "node": NODE}})
    assert assign_set_restore(cluster, r, fake_clock).outcome == "done"
    r = cluster.get(STATEFUL_SET_RESTORE, "r1", "restored")
    assert r["metadata"]["labels"][NODE_LABEL] == NODE
    result = run_set_restore(cluster, r, host.node, NODE, fake_clock)
    assert result.outcome == "done", result
    r = cluster.get(STATEFUL_SET_RESTORE, "r1", "restored")
    assert r["status"]["phase"] == "Completed"
    claims = sorted(c["metadata"]["name"] for c in cluster.list(PVC, "restored"))
    assert claims == ["data-db-0", "data-db-1", "data-db-2"]
    for o in range(3):
        claim = cluster.get(PVC, f"data-db-{o}", "restored")
        assert claim["metadata"]["labels"] == {"tier": "db", "app": "db",
                                               "statehold.io/restore": "r1"}
        pv = cluster.get(PV, claim["spec"]["volumeName"])
        assert pv["spec"]["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                          "namespace": "restored", "name": f"data-db-{o}"}
        pool_name, _, volume = pv["spec"]["csi"]["volumeHandle"].partition("/")
        target = scratch / "check" / str(o)
        target.mkdir(parents=True)
        host.node.pool(pool_name).mount(volume, target, readonly=True)
        try:
            assert sha_of(target / "data.bin") == first[f"db-{o}"]   # the first backup's bytes
            assert (target / "hook.txt").read_text() == "before\n"    # the pre-hook's write
            assert not (target / "post.txt").exists()                  # not the post-hook's
        finally:
            host.node.pool(pool_name).unmount(volume, target)
    assert run_set_restore(cluster, r, host.node, NODE, fake_clock).outcome == "skipped"

    # the same names again: refused, nothing created
    again = cluster.create({"apiVersion": API, "kind": "StatefulSetRestore",
                            "metadata": {"name": "r2", "namespace": "restored"},
                            "spec": {"groupBackupId": st["groupBackupId"], "target": "same-repo",
                                     "node": NODE}})
    assign_set_restore(cluster, again, fake_clock)
    result = run_set_restore(cluster, cluster.get(STATEFUL_SET_RESTORE, "r2", "restored"),
                             host.node, NODE, fake_clock)
    assert result.outcome == "failed"
    got = cluster.get(STATEFUL_SET_RESTORE, "r2", "restored")
    assert ready(got)["reason"] == "ClaimsExist" and got["status"]["phase"] == "Failed"
    assert "ClaimsExist" in [e["reason"] for e in cluster.events_for(got) if e["type"] == "Warning"]
    assert len(cluster.list(PVC, "restored")) == 3

    # one ordinal of the newer backup, as another set's claim, in the same namespace
    cluster.create({"apiVersion": API, "kind": "StatefulSetRestore",
                    "metadata": {"name": "r3", "namespace": NS},
                    "spec": {"backup": "b2", "statefulSetName": "copy", "ordinals": [1]}})
    assert assign_set_restore(cluster, cluster.get(STATEFUL_SET_RESTORE, "r3", NS),
                              fake_clock).outcome == "done"
    result = run_set_restore(cluster, cluster.get(STATEFUL_SET_RESTORE, "r3", NS), host.node,
                             NODE, fake_clock)
    assert result.outcome == "done", result
    assert [c["metadata"]["name"] for c in cluster.list(PVC, NS, label_selector={
        "statehold.io/restore": "r3"})] == ["data-copy-1"]


def secret_in(kube: MemoryKube, namespace: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "pw", "namespace": namespace},
                 "stringData": {"password": PASSWORD}})


def test_a_failing_pre_hook_freezes_nothing_and_the_post_hooks_still_run(
        cluster: MemoryKube, host: Host, fake_clock: Any) -> None:
    cluster.create({"apiVersion": API, "kind": "StatefulSetBackup",
                    "metadata": {"name": "b1", "namespace": NS},
                    "spec": {"statefulSetName": "db", "target": "t", "hooks": {
                        "pre": [hook("checkpoint", "sh", "-c", "echo no database >&2; exit 3",
                                     ordinals=[1])],
                        "post": [hook("after", "sh", "-c", "echo after > post.txt && echo post")]}}})
    assign_set_backup(cluster, cluster.get(STATEFUL_SET_BACKUP, "b1", NS), fake_clock)
    result = run_set_backup(cluster, cluster.get(STATEFUL_SET_BACKUP, "b1", NS), host.node, NODE,
                            fake_clock)
    assert result.outcome == "failed"
    assert not any(step in host.log for step in GROUP_STEPS)
    assert all((m / "post.txt").exists() for m in host.mounts.values())
    got = cluster.get(STATEFUL_SET_BACKUP, "b1", NS)
    assert ready(got)["reason"] == "HookFailed" and "no database" in ready(got)["message"]
    assert got["status"]["hooks"][0] | {"output": ""} == {
        "phase": "pre", "name": "checkpoint", "pod": "db-1", "container": "", "outcome": "Failed",
        "exitCode": 3, "onError": "Fail", "output": ""}
    assert host.node.list_snapshot_groups() == []
    assert all(host.pool.list_snapshots(f"pvc-data-{o}") == [] for o in range(3))


def test_a_schedule_prunes_its_own_groups_whole_and_their_objects(
        cluster: MemoryKube, host: Host, scratch: Path, fake_clock: Any) -> None:
    """Three scheduled group backups with keepLast 2, beside one made by hand: the oldest
    scheduled group goes with every member and its StatefulSetBackup; the manual one and
    every kept group stay complete; members record the schedule as their origin."""
    from statehold.backup.collecting import gc
    from statehold.backup.groupmanifest import group_ids, missing_members

    def scheduled(name: str) -> dict[str, Any]:
        cluster.create({"apiVersion": API, "kind": "StatefulSetBackup",
                        "metadata": {"name": name, "namespace": NS,
                                     "labels": {"statehold.io/schedule": "nightly"},
                                     "annotations": {"statehold.io/retention": '{"keepLast":2}'}},
                        "spec": {"statefulSetName": "db", "target": "t"}})
        assert assign_set_backup(cluster, cluster.get(STATEFUL_SET_BACKUP, name, NS),
                                 fake_clock).outcome == "done"
        done = run_set_backup(cluster, cluster.get(STATEFUL_SET_BACKUP, name, NS), host.node, NODE,
                              fake_clock)
        assert done.outcome == "done", done
        return cluster.get(STATEFUL_SET_BACKUP, name, NS)

    by_hand = back_up(cluster, host, fake_clock, "manual")
    made = []
    for i in range(3):
        for pod in host.mounts:
            host.write(pod, "data.bin", 10 + i)
        made.append(scheduled(f"nightly-{i}"))
        fake_clock.advance(hours=1)
    repo = Repository.open(DirectoryStore(scratch / "repo"), PASSWORD)
    kept = [load_group(repo, m["status"]["groupBackupId"]) for m in made[1:]]
    assert made[0]["status"]["groupBackupId"] not in group_ids(repo)
    assert not {m["backupId"] for m in made[0]["status"]["members"]} & set(repo.backup_ids())
    names = {o["metadata"]["name"] for o in cluster.list(STATEFUL_SET_BACKUP, NS)}
    assert names == {"manual", "nightly-1", "nightly-2"}
    last = cluster.get(STATEFUL_SET_BACKUP, "nightly-2", NS)
    cond = find(last["status"]["conditions"], "Retention")
    assert cond is not None and cond["status"] == "True", cond
    for g in [*kept, load_group(repo, by_hand["status"]["groupBackupId"])]:
        assert missing_members(repo, g) == []
    for g in kept:
        assert g.origin == f"schedule/{NS}/nightly"
        assert {repo.load_manifest(b).origin for b in g.backup_ids} == {g.origin}
    assert load_group(repo, by_hand["status"]["groupBackupId"]).origin == ""
    assert gc(repo, grace=0).chunks_deleted > 0  # the pruned group's own data went
