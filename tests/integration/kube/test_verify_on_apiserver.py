"""Scheduled verify of a BackupTarget through the operator on a real API server
(``kube_control_plane``): the chart's CRDs and RBAC, ``statehold operator run`` as the
operator Deployment's and the node DaemonSet's containers run it (their ServiceAccount
tokens, through the recording proxy: not one request refused or invalid), and a format 2
directory repository holding two backups in 1 MiB packs. Driven as a user would:

* ``spec.verify: {schedule: "*/1 * * * *", readDataSubset: "1/2"}``: the operator hands
  the slot to the node's agent, which reads slice 1 of 2 under the shared lock and reports
  ``outcome: Clean``, the packs and bytes read and ``nextSlice: 2`` in ``status.verify``,
  and a ``Verified`` Event;
* a byte flipped on disk in a pack of slice 2: the next slot reads slice 2 and reports
  ``outcome: Damaged`` naming that pack's chunk and both backups' ids where they need it,
  and a ``VerifyFailed`` Warning naming the pack; the two runs together read every pack once.

Slots are minutes; the waits are conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from statehold.backup import chunkstore
from statehold.backup.dirstore import DirectoryStore
from statehold.backup.imagebackup import create_backup
from statehold.backup.packs import PACK_PREFIX, pack_id_of
from statehold.backup.repository import Repository
from statehold.backup.sampling import Subset
from statehold.controller.schedules import parse_time
from statehold.kube.client import ApiKube
from statehold.kube.kinds import BACKUP_TARGET, CSI_NODE, EVENT
from tests.fixtures.controlplane import ControlPlane
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
    Deployment,
    container,
    install,
    own_dashboard_port,
    start,
    statehold_object,
)

pytestmark = pytest.mark.root

MiB = 1 << 20
PASSWORD = "verify e2e password"
SLOT_TIMEOUT = 240.0  # a minute slot, the operator's 30 s tick, the agent's 30 s pass


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[tuple[Deployment, str, list[str]]]:
    """The chart installed in a fresh namespace; its operator and one node's agent running
    (the node registered our driver: a CSINode); a format 2 repository with two backups."""
    root = Path(tempfile.mkdtemp(prefix="statehold-verify-e2e-", dir="/var/tmp"))
    ns = f"statehold-ver-{uuid.uuid4().hex[:8]}"
    node = f"verify-{uuid.uuid4().hex[:8]}"
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    kube = ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))
    homes = {node: root / "home"}
    proxy: RecordingProxy | None = None
    d: Deployment | None = None
    try:
        repo = Repository.init(DirectoryStore(root / "repo"), PASSWORD, version=2, chunk_size=64 << 10,
                               pack_size=MiB)
        chunkstore.use_cache(repo, root / "test-cache")
        ids = []
        for i in range(2):
            img = root / f"img{i}"
            img.write_bytes(random.Random(i).randbytes(5 * MiB))
            ids.append(create_backup(repo, img, volume=f"p/v{i}", commit_every=MiB).backup_id)
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
        kube.create({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node},
                     "spec": {"drivers": [{"name": DRIVER, "nodeID": node}]}})
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pw", "namespace": ns},
                     "stringData": {"password": PASSWORD}})
        homes[node].mkdir()
        operator = container(docs, "Deployment", "statehold-operator", "operator")
        agent = container(docs, "DaemonSet", "statehold-node", "statehold-agent")
        start(d, "op-1", own_dashboard_port(d, "op-1", operator), via_proxy,
              {"NAMESPACE": ns, "POD_NAME": "op-1"})
        start(d, f"agent-{node}", agent, via_proxy,
              {"NAMESPACE": ns, "POD_NAME": f"statehold-node-{node}", "NODE_NAME": node,
               "STATEHOLD_BACKUP_CACHE": str(root / "agent-cache")}, homes[node])
        yield d, node, ids
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
            kube.delete(CSI_NODE, node)
        try:
            inst.remove()
        finally:
            kube.close()
            admin.close()
            shutil.rmtree(root, ignore_errors=True)


def verify_status(d: Deployment) -> dict[str, Any]:
    return dict((d.kube.get(BACKUP_TARGET, "t", d.ns).get("status") or {}).get("verify") or {})


def events(d: Deployment, reason: str) -> list[dict[str, Any]]:
    t = d.kube.get(BACKUP_TARGET, "t", d.ns)
    return [e for e in d.kube.list(EVENT, d.ns)
            if e["involvedObject"].get("uid") == t["metadata"]["uid"] and e["reason"] == reason]


def test_scheduled_verify_reads_its_slices_and_names_a_damaged_pack(
        cluster: tuple[Deployment, str, list[str]]) -> None:
    d, node, ids = cluster
    packs = sorted((d.root / "repo" / "packs").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    assert len(packs) >= 8
    d.kube.create(statehold_object("BackupTarget", "t", d.ns, {
        "path": {"path": str(d.root / "repo")}, "passwordSecretRef": {"name": "pw"},
        "verify": {"schedule": "*/1 * * * *", "readDataSubset": "1/2"}}))

    # the first run the test sees complete: slice 1, or slice 2 when a late first slot and
    # the next one ran back to back on a loaded host (slice 1's status then lasted moments)
    first = d.wait("the first verify Completed", lambda: (
        v := verify_status(d)).get("phase") == "Completed" and v, timeout=SLOT_TIMEOUT)
    assert first["node"] == node and first["outcome"] == "Clean", first
    k = int(str(first["subset"]).partition("/")[0])
    assert first["subset"] in ("1/2", "2/2") and first["nextSlice"] == 3 - k, first
    assert first["objects"] == "packs"
    assert first["objectsTotal"] == len(packs) and first["problems"] == 0 and first["damage"] == []
    slice_of = Subset(parts=2).slice_of
    in_slice = {n: [p for p in packs if slice_of(pack_id_of(f"{PACK_PREFIX}{p.parent.name}/{p.name}")) == n]
                for n in (1, 2)}
    assert in_slice[1] and in_slice[2]  # both slices hold packs: each run reads only its own
    assert first["objectsRead"] == len(in_slice[k])
    assert first["bytesRead"] == sum(p.stat().st_size for p in in_slice[k])
    assert first["backups"] == 2 and first["durationSeconds"] >= 0 and first["completionTime"]
    assert d.wait("the Verified Event", lambda: events(d, "Verified"))[0]["type"] == "Normal"

    # a flipped byte in the first chunk blob of a pack the next slice holds
    victim = in_slice[2][0]
    with open(victim, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x01]))
    flipped = datetime.now(UTC).replace(microsecond=0)
    # the next run of slice 2 that started after the flip (one may have run just before it)
    second = d.wait("a verify of slice 2 after the flip", lambda: (
        v := verify_status(d)).get("phase") == "Completed" and v.get("subset") == "2/2"
        and (started := parse_time(v.get("startTime"))) is not None and started > flipped and v,
        timeout=3 * SLOT_TIMEOUT)
    assert second["outcome"] == "Damaged" and second["problems"] == 1, second
    assert second["nextSlice"] == 1
    assert second["objectsRead"] == len(in_slice[2])  # slice 2's packs, the damaged one among them
    (damage,) = second["damage"]
    assert damage["what"] == "corrupt" and victim.name in damage["detail"]
    assert damage["backups"] and set(damage["backups"]) <= set(ids)
    assert set(second["damagedBackups"]) == set(damage["backups"])
    failed = d.wait("the VerifyFailed Event", lambda: events(d, "VerifyFailed"))
    assert failed[0]["type"] == "Warning" and victim.name in failed[0]["message"]
    assert damage["name"] in failed[0]["message"]
    d.check_healthy()
