"""Three PostgreSQL instances as one StatefulSet, backed up at one instant under load and
restored as the set's claims, with the operator's side on a real API server (issue 13).

**Real:** the session's kube-apiserver, kube-controller-manager (its StatefulSet, PV,
namespace and garbage-collector controllers) and etcd (``kube_control_plane``), with
Statehold's CRDs; the StatefulSet ``pg`` (3 replicas, claim template ``data``) whose claims
``data-pg-0..2`` and pods the real StatefulSet controller makes; the operator's handlers
(:func:`assign_set_backup`, :func:`run_set_backup`, :func:`assign_set_restore`,
:func:`run_set_restore`, called as the operator's and the node plugin's kopf handlers call
them) reading and writing those objects, their status and Events through ``ApiKube``, each
with its ServiceAccount's token under the chart's RBAC (``statehold-operator`` for the
cluster side, ``statehold-node`` for the node side), and the operator's grant pass
(:class:`NodeGrants`) letting the node read the targets' Secrets and exec in the set's pods
only while the hooked backup runs; one pool of loop devices with XFS volumes, the engine's
group snapshot (FIFREEZE on every member), the backups in a directory repository;
PostgreSQL (Debian's), ``pgbench``, ``pg_amcheck``, ``pg_controldata``; the hook commands
(``psql``), run as real processes.

**Stand-ins, where a kubelet or a sidecar would act:** no CSI sidecar provisions the claims,
so the test creates each claim's PV as external-provisioner names it (``pvc-<claim uid>``,
bound ahead; the real PV controller binds it) on a volume it made in the pool; no kubelet
starts the pods, so the test reports them ``Running`` (their ``schedulerName`` is served by
no scheduler, so nothing else touches them) and each PostgreSQL runs on the host on its
pod's volume; and no kubelet can run an exec, so the facade's ``exec`` reads the pod from
the real API server, checks it as ``ApiKube.exec`` does, and where the API server would
open the WebSocket to the kubelet runs the command as a local process with the pod's
connection settings, once a SubjectAccessReview says the node's account may exec there
(``tests/fixtures/localexec.py``). The group snapshot is the engine's, taken by the
StatefulSetBackup path; no VolumeGroupSnapshot is involved (that path is the CSI
GroupController's, tested in ``tests/integration/agent/``).

The flow, and what a user relies on:

1. A writer stamps one increasing number into all three instances in turn, each insert
   committed before the next; pgbench loads ``pg-0`` beside it.
2. A StatefulSetBackup with hooks waits (``HooksNotGranted``, no hook run) until the
   operator's grant pass, and the exec grant is gone once it ended. Its pre-hook (mark
   ``pre``, ``CHECKPOINT``, print the checkpoint's REDO LSN) ran in every pod before the
   group snapshot, its post-hook (mark ``post``) in every pod after, in ordinal order;
   ``status.hooks`` holds each run's output and the real API server a ``HookSucceeded``
   Event per hook; the backup is ``Completed`` and ``Application``-consistent.
3. A StatefulSetRestore into the set's own namespace is refused (``ClaimsExist``): the
   claims are there; nothing is created.
4. A StatefulSetRestore into a new namespace creates claims ``data-pg-0..2``; the real PV
   controller binds them; a second restore there is refused and creates nothing; the set
   created there afterwards is given those claims by the real StatefulSet controller.
5. On each restored volume: the REDO point is the pre-hook's checkpoint or later (no older
   WAL to replay), the ``pre`` mark is there and the ``post`` mark is not (the snapshot fell
   between the hooks), PostgreSQL starts and ``pg_amcheck`` is clean, and the newest stamps
   of the three differ by at most one: one instant across the set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from statehold.controller.node_grants import NodeGrants
from statehold.controller.problems import Result
from statehold.controller.statefulset_backups import assign_set_backup, run_set_backup
from statehold.controller.statefulset_restores import assign_set_restore, run_set_restore
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.client import ApiKube
from statehold.kube.execs import ExecCall
from statehold.kube.facade import Obj
from statehold.kube.kinds import (
    EVENT,
    NAMESPACE,
    POD,
    PV,
    PVC,
    SECRET,
    STATEFUL_SET_BACKUP,
    STATEFUL_SET_RESTORE,
    STORAGE_CLASS,
    Kind,
)
from tests.e2e.statefulset_pg import (
    PgHost,
    Stamper,
    bound,
    drive,
    lsn,
    now,
    pods_running,
    provision_claims,
    statefulset,
    storage_class,
    until,
    volume_of,
)
from tests.e2e.test_postgres_workload import _as_postgres, _pg_bin
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.localexec import LocalExecKube, ProcessExec
from tests.integration.kube.installing import (
    Admin,
    Installation,
    service_account_token,
    token_kubeconfig,
)
from tests.integration.scheduler.realcluster import install_crds
from tests.unit.kube.validation import render

pytestmark = [pytest.mark.root, pytest.mark.slow]

API = "statehold.io/v1alpha1"
POOL = "fast"
PASSWORD = "pg group backups"
PODS = ("pg-0", "pg-1", "pg-2")
CLAIMS = ("data-pg-0", "data-pg-1", "data-pg-2")
ACCOUNTS = ("statehold-operator", "statehold-node")
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding")
STAMPS_BEFORE = 30
"""Stamps the writer commits before the backup starts, so it is mid-stream."""
PRE = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
       "-c", "INSERT INTO hook_marks VALUES ('pre')", "-c", "CHECKPOINT",
       "-c", "SELECT redo_lsn FROM pg_control_checkpoint()"]
POST = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
        "-c", "INSERT INTO hook_marks VALUES ('post')"]


@dataclass
class Scene:
    ns: str                 # the set's namespace
    restored_ns: str        # where the group is restored
    node: str               # the node name (PV affinity, the objects' node label)
    sc: str                 # the claim template's StorageClass
    admin: ApiKube          # sets the scene and reads what the handlers did
    operator: ApiKube       # the operator's ServiceAccount: the cluster-side handlers
    agent: LocalExecKube    # the node plugin's ServiceAccount, exec run locally: node side
    grants: NodeGrants      # the operator's grants to the node plugin (Secrets, exec)
    exec: ProcessExec
    host: PgHost
    repo: Path


@pytest.fixture
def scene(kube_control_plane: ControlPlane, engine_home: Path, scratch: Path) -> Iterator[Scene]:
    """The chart's accounts and RBAC in a release namespace, namespaces, a StorageClass and a
    node name unique to the run (the API server is the session's; CRDs another test
    installed are kept); everything made here deleted after (cluster-wide RBAC another test
    had put back), PostgreSQL stopped, the pool released."""
    install_crds(kube_control_plane.kubeconfig)
    run = secrets.token_hex(3)
    release = f"ssp-{run}-system"
    installer = Admin(kube_control_plane.kubeconfig)
    admin = ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))
    with contextlib.ExitStack() as stack:
        stack.callback(installer.close)
        stack.callback(admin.close)
        inst = Installation(installer)
        stack.callback(inst.remove)
        docs = render.render_chart(name="statehold", namespace=release)
        for kind in RBAC_KINDS:
            for doc in docs:
                if doc["kind"] == kind:
                    inst.apply(doc)
        accounts = {}
        for account in ACCOUNTS:
            token, ca = service_account_token(installer, release, account)
            accounts[account] = ApiKube.from_kubeconfig(str(token_kubeconfig(
                scratch / f"{account}.kubeconfig", installer.server, ca, token, account)))
            stack.callback(accounts[account].close)
        runner = ProcessExec()
        node_user = f"system:serviceaccount:{release}:statehold-node"
        s = Scene(ns=f"ssp-{run}", restored_ns=f"ssp-{run}-restored", node=f"ssp-{run}",
                  sc=f"ssp-{run}", admin=admin, operator=accounts["statehold-operator"],
                  agent=LocalExecKube(accounts["statehold-node"], runner,
                                      lambda call: _may_exec(installer, node_user, call)),
                  grants=NodeGrants(accounts["statehold-operator"], release), exec=runner,
                  host=PgHost(engine_home, scratch, POOL), repo=scratch / "repo")
        stack.callback(_close_host, s.host)
        stack.callback(_forget_pvs, admin, (s.ns, s.restored_ns))  # after the namespaces
        for ns in (s.ns, s.restored_ns):
            admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            stack.callback(_delete, admin, NAMESPACE, ns)
            admin.create({"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": "pw", "namespace": ns},
                          "stringData": {"password": PASSWORD}})
            admin.create({"apiVersion": API, "kind": "BackupTarget",
                          "metadata": {"name": "t", "namespace": ns},
                          "spec": {"path": {"path": str(s.repo)},
                                   "passwordSecretRef": {"name": "pw"}}})
            s.grants.sync(ns)  # the operator's pass: the node may read the target's Secret
            # a new RoleBinding takes effect once the server's RBAC cache has it
            until(lambda n=ns: _node_reads(s.agent, n), f"the node's grant of {ns}/pw")  # type: ignore[misc]
        admin.create(storage_class(s.sc))
        stack.callback(_delete, admin, STORAGE_CLASS, s.sc)
        yield s


def _node_reads(node: LocalExecKube, ns: str) -> bool:
    try:
        node.get(SECRET, "pw", ns)
    except PermissionDenied:
        return False
    return True


def _exec_refused(node: LocalExecKube, pod: str, ns: str) -> bool:
    """Whether the server refuses the node's exec in pod (until its RBAC cache drops the
    revoked binding, the stand-in may still run ``true`` there)."""
    try:
        node.exec(pod, ns, ["true"])
    except PermissionDenied:
        return True
    return False


def _may_exec(admin: Admin, user: str, call: ExecCall) -> bool:
    """What the API server asks before it opens an exec stream to a kubelet: may this user
    ``get`` and ``create`` ``pods/exec`` on the pod (1.20 authorizes the WebSocket as get,
    1.30 and later as create too)."""
    def may(verb: str) -> bool:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": ["system:serviceaccounts",
                                                    "system:authenticated"],
                           "resourceAttributes": {"namespace": call.namespace, "verb": verb,
                                                  "resource": "pods", "subresource": "exec",
                                                  "name": call.pod}}}
        got = admin.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool(got["status"].get("allowed"))

    return may("get") and may("create")


def _close_host(host: PgHost) -> None:
    from tests.fixtures.engine import close_node

    host.stop_all()
    close_node(host.node)


def _delete(kube: ApiKube, kind: Kind, name: str, namespace: str | None = None) -> None:
    with contextlib.suppress(NotFound):
        kube.delete(kind, name, namespace)


def _forget_pvs(kube: ApiKube, namespaces: tuple[str, ...]) -> None:
    """The PVs of our claims: with no provisioner to delete them, deleted here."""
    for pv in kube.list(PV):
        if ((pv["spec"].get("claimRef") or {}).get("namespace")) in namespaces:
            _delete(kube, PV, pv["metadata"]["name"])


def _events(kube: ApiKube, ns: str, name: str) -> list[Obj]:
    return [ev for ev in kube.list(EVENT, ns)
            if (ev.get("involvedObject") or {}).get("name") == name]


def _reasons(kube: ApiKube, ns: str, name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ev in _events(kube, ns, name):
        out.setdefault(str(ev.get("reason")), []).append(str(ev.get("message")))
    return out


def _claims(kube: ApiKube, ns: str) -> dict[str, str]:
    """Claim name -> uid."""
    return {c["metadata"]["name"]: c["metadata"]["uid"] for c in kube.list(PVC, ns)}


def test_three_postgres_instances_backed_up_at_one_instant_restore_consistent(
        scene: Scene) -> None:
    s, admin, operator, agent = scene, scene.admin, scene.operator, scene.agent
    host = s.host

    # the set: the controller makes claims and pods; PVs as the provisioner; pods Running
    admin.create(statefulset("pg", s.ns, replicas=3, storage_class=s.sc,
                             scheduler=f"{s.node}-none"))
    host.start_instances(PODS)
    provision_claims(admin, s.ns, list(CLAIMS), s.node,
                     lambda claim: f"{POOL}/{volume_of(PODS[CLAIMS.index(claim)])}")
    pods_running(admin, s.ns, PODS)
    for pod in PODS:
        s.exec.add(s.ns, pod, host.container(pod))
    source_claims = _claims(admin, s.ns)
    assert sorted(source_claims) == list(CLAIMS)

    for pg in host.instances.values():
        pg.sql("CREATE TABLE stamps (seq bigint PRIMARY KEY)")
        pg.sql("CREATE TABLE hook_marks (phase text NOT NULL)")
    primary = host.instances["pg-0"]
    _as_postgres([_pg_bin("pgbench"), "-h", str(primary.sockdir), "-p", "5432", "-i", "-s", "1",
                  "-q", "postgres"])
    stamper = Stamper(list(host.instances.values()))
    load = primary.pgbench("-n", "-c", "2", "-t", "2000")
    stamper.start()
    try:
        stamper.wait_for(STAMPS_BEFORE)
        admin.create({"apiVersion": API, "kind": "StatefulSetBackup",
                      "metadata": {"name": "pg-now", "namespace": s.ns},
                      "spec": {"statefulSetName": "pg", "target": "t",
                               "freezeTimeoutSeconds": 60, "hooks": {
                                   "pre": [{"name": "checkpoint", "container": "postgres",
                                            "command": PRE, "timeoutSeconds": 300}],
                                   "post": [{"name": "mark", "command": POST,
                                             "timeoutSeconds": 120}]}}})
        assign = drive(lambda: assign_set_backup(
            operator, operator.get(STATEFUL_SET_BACKUP, "pg-now", s.ns), now),
            "the operator assigning the backup")
        assert assign.outcome == "done", assign

        def node_side() -> Result:
            return run_set_backup(agent, agent.get(STATEFUL_SET_BACKUP, "pg-now", s.ns),
                                  host.node, s.node, now)

        # before the operator's grant the node may not exec there: it waits, nothing ran
        waiting = node_side()
        assert waiting.outcome == "retry", waiting
        assert _ready(admin, STATEFUL_SET_BACKUP, "pg-now", s.ns)["reason"] == "HooksNotGranted"
        assert s.exec.ran == []
        s.grants.sync(s.ns)  # the operator's pass grants exec while the backup is pending
        result = drive(node_side, "the agent's backup")
        assert result.outcome == "done", result
        stamper.wait_for(stamper.last + 5)  # the writer went on after the thaw
    finally:
        stamper.finish()
        _out, err = load.communicate(timeout=600)
    assert load.returncode == 0, err

    # what the real API server holds
    ssb = admin.get(STATEFUL_SET_BACKUP, "pg-now", s.ns)
    done = ssb["status"]
    assert done["phase"] == "Completed" and done["consistency"] == "Application", done
    assert ssb["metadata"]["labels"]["statehold.io/node"] == s.node
    assert [m["claim"] for m in done["members"]] == list(CLAIMS)
    assert all(m.get("backupId") for m in done["members"])
    assert [(h["phase"], h["name"], h["pod"], h["outcome"]) for h in done["hooks"]] == [
        *(("pre", "checkpoint", p, "Succeeded") for p in PODS),
        *(("post", "mark", p, "Succeeded") for p in PODS)]
    checkpoint = {h["pod"]: lsn(h["output"].strip().splitlines()[-1])
                  for h in done["hooks"] if h["phase"] == "pre"}
    # the exec calls, as the stand-in ran them: each hook once per pod, pre before post
    assert [(r.call.pod, r.call.container, r.call.command[-1]) for r in s.exec.ran] == [
        *((p, "postgres", PRE[-1]) for p in PODS), *((p, "postgres", POST[-1]) for p in PODS)]
    assert max(r.ended for r in s.exec.ran[:3]) <= min(r.started for r in s.exec.ran[3:])
    reasons = _reasons(admin, s.ns, "pg-now")
    assert "HookFailed" not in reasons, reasons
    hook_events = sorted(reasons.get("HookSucceeded", []))
    assert len(hook_events) == 2 and all("pg-0, pg-1, pg-2" in m for m in hook_events), reasons
    assert reasons.get("Snapshotted") and reasons.get("Completed"), reasons
    s.grants.sync(s.ns)  # the backup ended: the operator takes the exec grant back
    until(lambda: _exec_refused(agent, "pg-0", s.ns), "the exec grant taken back")
    for pg in host.instances.values():
        pg.stop()

    # a restore into the set's own namespace: its claims are there, nothing is made
    admin.create({"apiVersion": API, "kind": "StatefulSetRestore",
                  "metadata": {"name": "over", "namespace": s.ns}, "spec": {"backup": "pg-now"}})
    refused = drive(lambda: assign_set_restore(
        operator, operator.get(STATEFUL_SET_RESTORE, "over", s.ns), now),
        "the operator judging the restore")
    assert refused.outcome == "failed", refused
    _assert_refused(admin, s.ns, "over")
    assert _claims(admin, s.ns) == source_claims

    # the group into a new namespace, as the set's claims
    admin.create({"apiVersion": API, "kind": "StatefulSetRestore",
                  "metadata": {"name": "pg", "namespace": s.restored_ns},
                  "spec": {"groupBackupId": done["groupBackupId"], "target": "t",
                           "node": s.node}})
    _restore(s, "pg")
    rst = admin.get(STATEFUL_SET_RESTORE, "pg", s.restored_ns)["status"]
    assert rst["phase"] == "Completed", rst
    restored_claims = _claims(admin, s.restored_ns)
    assert sorted(restored_claims) == list(CLAIMS)
    volumes = {}
    for claim in CLAIMS:
        pvc = admin.get(PVC, claim, s.restored_ns)
        assert pvc["spec"]["storageClassName"] == s.sc  # the template's class
        assert pvc["metadata"]["labels"]["app"] == "pg"  # the set's selector
        pv_name = pvc["spec"]["volumeName"]
        until(lambda c=claim, p=pv_name: bound(admin, PVC, c, s.restored_ns) and bound(admin, PV, p),  # type: ignore[misc]
              f"the PV controller binding restored claim {claim}")
        volumes[claim] = admin.get(PV, pv_name)["spec"]["csi"]["volumeHandle"]
    pvs_before = sorted(p["metadata"]["name"] for p in admin.list(PV))

    # again, into the same namespace: refused, nothing made
    admin.create({"apiVersion": API, "kind": "StatefulSetRestore",
                  "metadata": {"name": "again", "namespace": s.restored_ns},
                  "spec": {"groupBackupId": done["groupBackupId"], "target": "t",
                           "node": s.node}})
    refused = _restore(s, "again")
    assert refused.outcome == "failed", refused
    _assert_refused(admin, s.restored_ns, "again")
    assert _claims(admin, s.restored_ns) == restored_claims
    assert sorted(p["metadata"]["name"] for p in admin.list(PV)) == pvs_before

    # the set created afterwards is given the restored claims by its controller
    admin.create(statefulset("pg", s.restored_ns, replicas=3, storage_class=s.sc,
                             scheduler=f"{s.node}-none"))
    for o, pod in enumerate(PODS):
        got = until(lambda p=pod: _pod(admin, p, s.restored_ns), f"the controller making {pod}")  # type: ignore[misc]
        assert [v["persistentVolumeClaim"]["claimName"] for v in got["spec"]["volumes"]
                if "persistentVolumeClaim" in v] == [CLAIMS[o]]
    assert _claims(admin, s.restored_ns) == restored_claims  # adopted, none made anew

    newest = {}
    for claim, pod in zip(CLAIMS, PODS, strict=True):
        pool, _, volume = volumes[claim].partition("/")
        pg = host.restored_instance(pool, volume, pod)
        control = _as_postgres([_pg_bin("pg_controldata"), "-D", str(pg.data)],
                               env={**os.environ, "LC_ALL": "C"}).stdout
        redo = next(line.split(":", 1)[1] for line in control.splitlines()
                    if line.startswith("Latest checkpoint's REDO location"))
        assert lsn(redo) >= checkpoint[pod], (pod, redo)  # nothing older to replay
        (pg.data / "postmaster.pid").unlink()  # the snapshot caught a running server
        pg.start()  # crash recovery from the checkpoint on
        _as_postgres([_pg_bin("pg_amcheck"), "-h", str(pg.sockdir), "-p", "5432", "-d", "postgres",
                      "--install-missing", "--heapallindexed"])
        assert pg.sql("SELECT string_agg(phase, ',') FROM hook_marks") == "pre", pod
        newest[pod] = int(pg.sql("SELECT max(seq) FROM stamps"))
        if pod == "pg-0":
            assert pg.sql("SELECT count(*) FROM pgbench_accounts") == "100000"
            assert pg.sql("SELECT coalesce(sum(abalance), 0) = (SELECT coalesce(sum(delta), 0) "
                          "FROM pgbench_history) FROM pgbench_accounts") == "t"
    assert min(newest.values()) >= STAMPS_BEFORE
    assert max(newest.values()) - min(newest.values()) <= 1, newest  # one instant
    assert max(newest.values()) < stamper.last  # the backup is not the end of the run


def _restore(s: Scene, name: str) -> Result:
    """The operator assigns the restore, the node's agent runs it (each as its account)."""
    op, agent = s.operator, s.agent
    assigned = drive(lambda: assign_set_restore(
        op, op.get(STATEFUL_SET_RESTORE, name, s.restored_ns), now),
        f"the operator assigning restore {name}")
    assert assigned.outcome == "done", assigned
    return drive(lambda: run_set_restore(
        agent, agent.get(STATEFUL_SET_RESTORE, name, s.restored_ns), s.host.node, s.node, now),
        f"the agent's restore {name}")


def _ready(kube: ApiKube, kind: Kind, name: str, ns: str) -> Obj:
    conds = (kube.get(kind, name, ns).get("status") or {}).get("conditions") or []
    return dict(next(c for c in conds if c["type"] == "Ready"))


def _pod(kube: ApiKube, name: str, ns: str) -> Obj | None:
    try:
        return kube.get(POD, name, ns)
    except NotFound:
        return None


def _assert_refused(kube: ApiKube, ns: str, name: str) -> None:
    st = kube.get(STATEFUL_SET_RESTORE, name, ns)["status"]
    assert st["phase"] == "Failed", st
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ClaimsExist" and all(c in ready["message"] for c in CLAIMS), ready
    assert any(all(c in m for c in CLAIMS) for m in _reasons(kube, ns, name).get("ClaimsExist", []))
