"""Retention and gc through the operator on a real API server (``kube_control_plane``):
the chart's CRDs and RBAC, ``statehold operator run`` as the operator Deployment's and the
node DaemonSet's containers run it (their ServiceAccount tokens, through the recording
proxy: not one request refused or invalid), a real pool on node n1 and a directory
BackupTarget. Driven by writing objects, as a user would:

* a VolumeBackup made by hand, then a ``*/1`` BackupSchedule with ``keepLast: 1`` whose two
  runs read different data: after the second, the first scheduled backup is gone from the
  repository and its VolumeBackup deleted, while the manual backup and its VolumeBackup
  stay (its bytes restore);
* ``spec.gc`` on the target (``*/1``, no grace): the operator hands the run to n1's agent,
  which collects under the repository's exclusive lock and reports in ``status.gc``: the
  bytes it freed (what the pruned backup alone held, measured on the directory) and how
  long it took; every kept backup still restores bit for bit.

Slots are minutes, so the schedule is suspended while the test writes data and released
for exactly one run at a time; the waits are conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statehold.backup.packs import INDEX_PREFIX, decode_index
from statehold.backup.repository import Repository
from statehold.backup.restoring import restore_image
from statehold.controller.backup_runner import open_repository
from statehold.controller.targets import TargetConfig
from statehold.engine.node import Node
from statehold.engine.types import MiB, VolumeMode
from statehold.errors import NotFound
from statehold.kube.client import ApiKube
from statehold.kube.kinds import (
    BACKUP_SCHEDULE,
    BACKUP_TARGET,
    EVENT,
    PV,
    PVC,
    STORAGE_POOL,
    VOLUME_BACKUP,
)
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.engine import release_home
from tests.integration.kube.apiproxy import RecordingProxy
from tests.integration.kube.installing import (
    Admin,
    Installation,
    service_account_token,
    token_kubeconfig,
)
from tests.integration.kube.test_operator_on_apiserver import (
    ACCOUNTS,
    DRIVER,
    TOPOLOGY_KEY,
    Deployment,
    container,
    install,
    own_dashboard_port,
    start,
    statehold_object,
)

pytestmark = pytest.mark.root

NODE = "n1"
VOLUME, VOLUME_SIZE = "pvc-kept", 32 * MiB
SCHEDULE = "minutely"
PASSWORD = "retention e2e password"
SLOT_TIMEOUT = 240.0  # a minute slot, the operator's 30 s tick, the backup on 2 busy cores
SCHEDULED = {"statehold.io/schedule": SCHEDULE}


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[Deployment]:
    """The chart installed in a fresh namespace; its operator and n1's agent running; a
    Ready pool on n1 with one block volume, bound to PVC ``data`` by the PV controller."""
    root = Path(tempfile.mkdtemp(prefix="statehold-retention-e2e-", dir="/var/tmp"))
    ns = f"statehold-ret-{uuid.uuid4().hex[:8]}"
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    kube = ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))
    homes = {NODE: root / f"home-{NODE}"}
    proxy: RecordingProxy | None = None
    d: Deployment | None = None
    try:
        docs = install(inst, ns)
        tokens = {a: service_account_token(admin, ns, a) for a in ACCOUNTS}
        ca = root / "cluster-ca.crt"
        ca.write_bytes(next(iter(tokens.values()))[1])
        proxy = RecordingProxy(admin.server, ca, {tok: a for a, (tok, _) in tokens.items()}, root)
        url = proxy.start()
        via_proxy = {a: token_kubeconfig(root / f"{a}.kubeconfig", url, proxy.ca.read_bytes(),
                                         tok, a) for a, (tok, _) in tokens.items()}
        direct = {a: token_kubeconfig(root / f"{a}-direct.kubeconfig", admin.server, pem, tok, a)
                  for a, (tok, pem) in tokens.items()}
        d = Deployment(ns=ns, root=root, kube=kube, proxy=proxy, direct=direct, processes={},
                       homes=homes)
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pw", "namespace": ns},
                     "stringData": {"password": PASSWORD}})
        kube.create(statehold_object("BackupTarget", "t", ns, {
            "path": {"path": str(root / "repo")}, "passwordSecretRef": {"name": "pw"}}))
        homes[NODE].mkdir()
        kube.create(statehold_object("StoragePool", d.pool_name(NODE), None, {
            "node": NODE, "directory": str(homes[NODE] / "images"), "imageSize": "1Gi"}))
        operator = container(docs, "Deployment", "statehold-operator", "operator")
        agent = container(docs, "DaemonSet", "statehold-node", "statehold-agent")
        start(d, "op-1", own_dashboard_port(d, "op-1", operator), via_proxy,
              {"NAMESPACE": ns, "POD_NAME": "op-1"})
        start(d, f"agent-{NODE}", agent, via_proxy,
              {"NAMESPACE": ns, "POD_NAME": f"statehold-node-{NODE}", "NODE_NAME": NODE},
              homes[NODE])
        d.wait(f"StoragePool of {NODE} Ready", lambda: d.kube.get(
            STORAGE_POOL, d.pool_name(NODE))["status"]["phase"] == "Ready")
        make_claim(d)
        yield d
    finally:
        try:
            if d is not None:
                for p in d.processes.values():
                    p.terminate()
                for p in d.processes.values():
                    p.stop()
        finally:
            if proxy is not None:
                proxy.stop()
        with contextlib.suppress(Exception):
            for pv in kube.list(PV):
                if (pv["spec"].get("claimRef") or {}).get("namespace") == ns:
                    kube.delete(PV, pv["metadata"]["name"])
            pool = kube.get(STORAGE_POOL, f"{NODE}-pool")
            for ev in kube.list(EVENT, "default"):
                if ev["involvedObject"].get("uid") == pool["metadata"]["uid"]:
                    kube.delete(EVENT, ev["metadata"]["name"], "default")
            kube.delete(STORAGE_POOL, f"{NODE}-pool")
        try:
            inst.remove()
        finally:
            kube.close()
            admin.close()
            for home in homes.values():
                release_home(home)
            shutil.rmtree(root, ignore_errors=True)


def make_claim(d: Deployment) -> None:
    """What the CSI driver would have provisioned on n1: a block volume and its PV, and the
    claim, bound to it by the real PV controller."""
    node = Node(d.homes[NODE])
    try:
        node.pool(d.pool_name(NODE)).create_volume(VOLUME, VOLUME_SIZE, mode=VolumeMode.BLOCK, fs=None)
    finally:
        node.close()
    pv_name = f"{d.ns}-kept"
    d.kube.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {
        "name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
        "spec": {"capacity": {"storage": str(VOLUME_SIZE)}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "statehold-local",
                 "volumeMode": "Block",
                 "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "namespace": d.ns, "name": "data"},
                 "csi": {"driver": DRIVER, "volumeHandle": f"{d.pool_name(NODE)}/{VOLUME}",
                         "volumeAttributes": {"statehold.io/type": "local"}},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": TOPOLOGY_KEY, "operator": "In", "values": [NODE]}]}]}}}})
    d.kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data", "namespace": d.ns, "labels": {"backup": "minutely"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "statehold-local",
                            "volumeMode": "Block", "volumeName": pv_name,
                            "resources": {"requests": {"storage": str(VOLUME_SIZE)}}}})
    d.wait("PVC data Bound by the PV controller", lambda: d.kube.get(PVC, "data", d.ns)[
        "status"]["phase"] == "Bound")


def write_generation(d: Deployment, generation: int) -> str:
    """4 MiB only this generation holds, written in place (a later one overwrites it), and
    a marker in the first chunk: the volume's sha256."""
    node = Node(d.homes[NODE])
    try:
        path = node.pool(d.pool_name(NODE)).get_volume(VOLUME).path
    finally:
        node.close()
    seed = hashlib.sha256(f"generation {generation}".encode()).digest()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                               for i in range(4 * MiB // 32)), 8 * MiB)
        os.pwrite(fd, f"generation {generation}\n".encode(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def finished(d: Deployment, name: str) -> dict[str, Any]:
    return dict(d.wait(f"VolumeBackup {name} Completed or Failed", lambda: (
        b := d.kube.get(VOLUME_BACKUP, name, d.ns))["status"]["phase"] in ("Completed", "Failed")
        and b, timeout=SLOT_TIMEOUT))


def one_scheduled_run(d: Deployment, before: set[str]) -> dict[str, Any]:
    """Let the schedule make exactly one VolumeBackup (suspended again as soon as it is
    there), and wait for it to finish."""
    d.kube.patch(BACKUP_SCHEDULE, SCHEDULE, {"spec": {"suspend": False}}, d.ns)
    name = d.wait("the schedule's next VolumeBackup", lambda: next(iter(sorted(
        {b["metadata"]["name"] for b in d.kube.list(VOLUME_BACKUP, d.ns, label_selector=SCHEDULED)}
        - before)), None), timeout=SLOT_TIMEOUT)
    d.kube.patch(BACKUP_SCHEDULE, SCHEDULE, {"spec": {"suspend": True}}, d.ns)
    done = finished(d, name)
    assert done["status"]["phase"] == "Completed", done["status"].get("conditions")
    return done


def gone(d: Deployment, name: str) -> bool:
    try:
        d.kube.get(VOLUME_BACKUP, name, d.ns)
    except NotFound:
        return True
    return False


def pack_files(repo_dir: Path) -> dict[str, int]:
    """The repository's packs (format 2, §11.2: where chunk data lives): name -> bytes."""
    return {p.name: p.stat().st_size for p in (repo_dir / "packs").rglob("*") if p.is_file()}


def indexed_packs(repo: Repository) -> set[str]:
    """The packs (hex ids) the repository's index objects name, read from the store."""
    return {pack.hex() for info in repo.store.list(INDEX_PREFIX)
            for _cid, pack, _off, _len in decode_index(repo.get_blob(info.key), info.key)}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_)


def test_a_schedules_retention_spares_manual_backups_and_gc_frees_what_it_pruned(
        cluster: Deployment) -> None:
    d = cluster
    target = TargetConfig(name="t", namespace=d.ns, kind="path", password=PASSWORD,
                          path=str(d.root / "repo"))
    sha = {"by-hand": write_generation(d, 1)}
    d.kube.create(statehold_object("VolumeBackup", "by-hand", d.ns, {
        "persistentVolumeClaimName": "data", "target": "t"}))
    by_hand = finished(d, "by-hand")
    assert by_hand["status"]["phase"] == "Completed", by_hand["status"].get("conditions")

    # a schedule created suspended: each run is let through once its data is written
    d.kube.create(statehold_object("BackupSchedule", SCHEDULE, d.ns, {
        "schedule": "*/1 * * * *", "target": "t", "suspend": True,
        "selector": {"matchLabels": {"backup": "minutely"}}, "retention": {"keepLast": 1}}))
    sha["first"] = write_generation(d, 2)
    first = one_scheduled_run(d, set())
    sha["second"] = write_generation(d, 3)
    second = one_scheduled_run(d, {first["metadata"]["name"]})

    # the prune after the second run: the first scheduled backup and its object went
    d.wait(f"VolumeBackup {first['metadata']['name']} deleted by the agent's prune",
           lambda: gone(d, first["metadata"]["name"]))
    second = d.wait("the second run's Retention condition", lambda: (
        b := d.kube.get(VOLUME_BACKUP, second["metadata"]["name"], d.ns)) and any(
        c["type"] == "Retention" and c["status"] == "True"
        for c in b["status"].get("conditions") or []) and b)
    assert condition(second, "Retention")["reason"] == "Applied"
    pruned = d.wait("the Pruned Event", lambda: d.events(second).get("Pruned"))
    assert pruned == "Normal"
    repo = open_repository(target)
    ids = set(repo.backup_ids())
    assert first["status"]["backupId"] not in ids
    assert {by_hand["status"]["backupId"], second["status"]["backupId"]} <= ids
    # the manual backup: its object is there, untouched by any retention, its origin empty
    kept = d.kube.get(VOLUME_BACKUP, "by-hand", d.ns)
    assert not any(c["type"] == "Retention" for c in kept["status"].get("conditions") or [])
    assert repo.load_manifest(by_hand["status"]["backupId"]).origin == ""
    assert repo.load_manifest(second["status"]["backupId"]).origin == f"schedule/{d.ns}/{SCHEDULE}"
    names = {b["metadata"]["name"] for b in d.kube.list(VOLUME_BACKUP, d.ns)}
    assert names == {"by-hand", second["metadata"]["name"]}

    # gc on the target's own schedule, run by n1's agent under the exclusive lock
    assert repo.config.version == 2  # the operator created the repository: format 2
    packs_before = pack_files(d.root / "repo")
    before = sum(packs_before.values())
    d.kube.patch(BACKUP_TARGET, "t", {"spec": {"gc": {"schedule": "*/1 * * * *",
                                                      "graceSeconds": 0}}}, d.ns)
    gc = d.wait("gc Completed on the target", lambda: (
        g := (d.kube.get(BACKUP_TARGET, "t", d.ns).get("status") or {}).get("gc") or {}).get(
        "phase") == "Completed" and g, timeout=SLOT_TIMEOUT)
    packs_after = pack_files(d.root / "repo")
    after = sum(packs_after.values())
    assert set(packs_before) - set(packs_after)  # the pruned run's pack was deleted
    assert indexed_packs(repo) <= set(packs_after)  # and no index object names it
    assert gc["node"] == NODE
    assert gc["bytesFreed"] == before - after, (gc, before, after)
    assert gc["bytesFreed"] >= 4 * MiB  # the 4 MiB only the pruned run held, and more
    assert gc["chunksDeleted"] >= 5 and gc["chunksInGrace"] == 0 and gc["damagedBackups"] == 0
    assert gc["durationSeconds"] >= 0 and gc["startTime"] and gc["completionTime"]
    assert gc["nextScheduleTime"] > gc["scheduledTime"]
    t = d.kube.get(BACKUP_TARGET, "t", d.ns)
    assert d.wait("the GarbageCollected Event", lambda: d.events(t).get("GarbageCollected")) == "Normal"
    assert not list(repo.store.list("locks/"))  # nothing holds the repository now

    # every kept backup restores bit for bit
    for name, backup in (("by-hand", by_hand), ("second", second)):
        out = d.root / f"{name}.img"
        restore_image(repo, backup["status"]["backupId"], out)
        digest = hashlib.sha256()
        with open(out, "rb") as f:
            while block := f.read(MiB):
                digest.update(block)
        assert digest.hexdigest() == sha[name], name
    d.check_healthy()
