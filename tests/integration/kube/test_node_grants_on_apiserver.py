"""Issue #12, the node plugin's half, on a real API server (``kube_control_plane``:
kube-apiserver v1.20.2 with RBAC, kube-controller-manager's garbage collector; or the
cluster STATEHOLD_TEST_KUBECONFIG names): the node plugin's account may read the Secrets
BackupTargets name and exec where hooked backups run, and nothing that mints an identity.

The chart's CRDs, ServiceAccounts, ClusterRoles, Roles and bindings are installed as
rendered in a fresh release namespace, with two tenant namespaces beside it. The
operator's grants (``node_grants.NodeGrants``) run with the ``statehold-operator``
account's own token (so the API server's escalation checks judge what it writes), and every
question about the node plugin is asked with the ``statehold-node`` token, or of the API
server about that account (SubjectAccessReview, for exec: no kubelet runs here):

* with a BackupTarget in tenant X naming Secret pw, the node plugin gets X/pw (and reads
  the target as the node side does), and is refused every other Secret of X, pw of another
  namespace, the agents' CA Secret and the accounts' token Secrets of the release
  namespace, listing Secrets, and widening its Role; before the operator's pass it is
  refused pw too, which the node side reports as SecretNotGranted (retried);
* a target in the release namespace naming the CA's Secret gets it no grant;
* exec into pods (and the read of the pod every exec does first) only in a namespace with
  a StatefulSetBackup with hooks that has not ended, and only until it ends;
* the last target deleted, the garbage collector removes the Role and its binding (the
  operator need not be running).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from statehold.controller.agent_certs import CA_SECRET
from statehold.controller.node_grants import HOOKS_ROLE, SECRETS_ROLE, NodeGrants
from statehold.controller.problems import Problem
from statehold.controller.statefulset_backups import hooks_granted
from statehold.controller.targets import resolve_target
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from statehold.kube.client import ApiKube
from statehold.kube.kinds import (
    BACKUP_TARGET,
    ROLE,
    ROLE_BINDING,
    SECRET,
    STATEFUL_SET_BACKUP,
)
from tests.fixtures.controlplane import ControlPlane
from tests.integration.kube.installing import (
    Admin,
    Installation,
    service_account_token,
    token_kubeconfig,
)
from tests.unit.kube.validation import render

RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding")
ACCOUNTS = ("statehold-operator", "statehold-node")
API = "statehold.io/v1alpha1"
PASSWORD = "node grants password"
HOOKS = {"pre": [{"name": "sync", "command": ["sync"]}]}
TIMEOUT = 60.0


@dataclass
class Cluster:
    ns: str                # the release namespace (the accounts, the agents' CA)
    tenant: str            # X: a BackupTarget, later a StatefulSetBackup with hooks
    other: str             # Y: a Secret and a pod, never granted
    admin: Admin
    kube: ApiKube          # admin: sets the scene and reads what the others did
    operator: ApiKube      # the operator's ServiceAccount
    node: ApiKube          # the node plugin's ServiceAccount

    def node_may(self, verb: str, resource: str, namespace: str, *, subresource: str = "",
                 name: str = "") -> bool:
        """The API server's answer for the node plugin's account (SubjectAccessReview)."""
        attrs: dict[str, Any] = {"namespace": namespace, "verb": verb, "group": "",
                                 "resource": resource}
        if subresource:
            attrs["subresource"] = subresource
        if name:
            attrs["name"] = name
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": f"system:serviceaccount:{self.ns}:statehold-node",
                           "groups": ["system:serviceaccounts", f"system:serviceaccounts:{self.ns}",
                                      "system:authenticated"],
                           "resourceAttributes": attrs}}
        got = self.admin.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool(got["status"].get("allowed"))

    def may_exec(self, namespace: str, pod: str = "db-0") -> bool:
        """Both verbs an exec is authorized as (get before 1.30, create too after), and the
        read of the pod that comes first."""
        return all(self.node_may(verb, "pods", namespace, subresource="exec", name=pod)
                   for verb in ("get", "create")) and self.node_may("get", "pods", namespace,
                                                                     name=pod)


def wait_until(what: str, check: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(InvalidArgument):  # e.g. the namespace's account not there yet
            if got := check():
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def secret(kube: ApiKube, ns: str, name: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                 "stringData": {"password": PASSWORD}})


def target(kube: ApiKube, ns: str, name: str, password_secret: str) -> None:
    kube.create({"apiVersion": API, "kind": "BackupTarget",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"path": {"path": "/var/tmp/statehold-node-grants-none"},
                          "passwordSecretRef": {"name": password_secret}}})


def pod(kube: ApiKube, ns: str, name: str = "db-0") -> None:
    """A pod (no kubelet here: it stays Pending), once the namespace's default account is
    there (the ServiceAccount admission plugin wants it)."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"automountServiceAccountToken": False,
                     "containers": [{"name": "db", "image": "registry.invalid/db:1"}]}}

    def made() -> bool:
        try:
            kube.create(body)
        except (InvalidArgument, PermissionDenied, FailedPrecondition):
            return False
        return True

    wait_until(f"pod {ns}/{name} created", made)


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="statehold-node-grants-", dir="/var/tmp"))
    tag = uuid.uuid4().hex[:8]
    ns, tenant, other = f"statehold-grants-{tag}", f"tenant-{tag}", f"other-{tag}"
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    clients: list[ApiKube] = []
    try:
        for path in sorted((render.CHART / "crds").glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if crd:
                    inst.crd(crd)
        docs = render.render_chart(name="statehold", namespace=ns)
        for kind in RBAC_KINDS:
            for doc in docs:
                if doc["kind"] == kind:
                    inst.apply(doc)
        for name in (tenant, other):
            inst.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        tokens = {a: service_account_token(admin, ns, a) for a in ACCOUNTS}
        as_ = {a: ApiKube.from_kubeconfig(str(token_kubeconfig(
            root / f"{a}.kubeconfig", admin.server, pem, tok, a))) for a, (tok, pem) in tokens.items()}
        clients += [*as_.values(), ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))]
        kube = clients[-1]
        for ns_, name in ((tenant, "pw"), (tenant, "other"), (other, "pw"), (ns, CA_SECRET)):
            secret(kube, ns_, name)
        target(kube, tenant, "t", "pw")
        yield Cluster(ns, tenant, other, admin, kube, as_["statehold-operator"],
                      as_["statehold-node"])
    finally:
        try:
            inst.remove()  # the namespaces (Secrets, targets, grants), the RBAC, the CRDs
        finally:
            for c in clients:
                c.close()
            admin.close()
            shutil.rmtree(root, ignore_errors=True)


def test_the_node_gets_the_named_secret_and_nothing_that_mints_an_identity(
        cluster: Cluster) -> None:
    c = cluster
    # before the operator's pass: refused, and the node side waits instead of failing
    with pytest.raises(PermissionDenied):
        c.node.get(SECRET, "pw", c.tenant)
    with pytest.raises(Problem) as waiting:
        resolve_target(c.node, c.tenant, "t")
    assert waiting.value.reason == "SecretNotGranted" and not waiting.value.permanent

    # a target in the release namespace naming the CA's Secret: never granted
    target(c.kube, c.ns, "ca", CA_SECRET)
    grants = NodeGrants(c.operator, c.ns)  # as the operator: the server checks escalation
    grants.sync_all()
    # the authorizer reads RBAC from its own cache: a new binding acts a moment later
    wait_until("the Secret grant acts", lambda: c.node_may("get", "secrets", c.tenant, name="pw"))
    assert resolve_target(c.node, c.tenant, "t").password == PASSWORD
    assert c.node.get(SECRET, "pw", c.tenant)["metadata"]["name"] == "pw"
    assert c.node_may("get", "secrets", c.tenant, name="pw")

    others = sorted(s["metadata"]["name"] for s in c.kube.list(SECRET, c.ns))
    # not a vacuous loop: the CA and both accounts' token Secrets are among them
    assert {CA_SECRET, "statehold-operator-test-token", "statehold-node-test-token"} <= set(others)
    refused = [(c.tenant, "other"), (c.other, "pw")] + [(c.ns, n) for n in others]
    for ns, name in refused:
        with pytest.raises(PermissionDenied):
            c.node.get(SECRET, name, ns)
    with pytest.raises(Problem) as ca:
        resolve_target(c.node, c.ns, "ca")
    assert ca.value.reason == "SecretNotGranted"
    with pytest.raises(NotFound):  # no name to grant there: no Role (an empty one grants all)
        c.kube.get(ROLE, SECRETS_ROLE, c.ns)
    for ns in (c.tenant, c.other, None):
        with pytest.raises(PermissionDenied):
            c.node.list(SECRET, ns)
    assert not c.node.may("get", SECRET, c.tenant)  # a grant by name is none on every Secret
    with pytest.raises(PermissionDenied):  # nor may the node widen its grant
        c.node.patch(ROLE, SECRETS_ROLE, {"rules": [{"apiGroups": [""], "resources": ["secrets"],
                                                      "verbs": ["get", "list"]}]}, c.tenant)
    # what the server stored is what the operator wrote (the control plane is shared by the
    # session: other tests' namespaces may still hold targets, and are not ours to judge)
    ours = (f"{c.ns}:", f"{c.tenant}:", f"{c.other}:")
    assert [m for m in grants.sync_all() if m.startswith(ours)] == []


def test_exec_only_where_a_hooked_backup_has_not_ended(cluster: Cluster) -> None:
    c = cluster
    for ns in (c.tenant, c.other):
        pod(c.kube, ns)
    grants = NodeGrants(c.operator, c.ns)
    grants.sync_all()
    assert not c.may_exec(c.tenant) and not c.may_exec(c.other)
    with pytest.raises(PermissionDenied):
        c.node.exec("db-0", c.tenant, ["true"])
    with pytest.raises(Problem) as waiting:
        hooks_granted(c.node, c.tenant, "db", [0], HOOKS)
    assert waiting.value.reason == "HooksNotGranted" and not waiting.value.permanent

    c.kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                   "metadata": {"name": "hooked", "namespace": c.tenant},
                   "spec": {"statefulSetName": "db", "target": "t", "hooks": HOOKS}})
    grants.sync(c.tenant)
    wait_until("the exec grant acts", lambda: c.may_exec(c.tenant))  # the authorizer's cache
    assert not c.may_exec(c.other)
    assert c.kube.get(ROLE_BINDING, HOOKS_ROLE, c.tenant)["roleRef"]["kind"] == "ClusterRole"
    hooks_granted(c.node, c.tenant, "db", [0], HOOKS)
    with pytest.raises(FailedPrecondition):  # allowed; the pod is only not running (no kubelet)
        c.node.exec("db-0", c.tenant, ["true"])
    with pytest.raises(PermissionDenied):
        c.node.exec("db-0", c.other, ["true"])

    c.kube.patch_status(STATEFUL_SET_BACKUP, "hooked", {"phase": "Completed"}, c.tenant)
    assert grants.sync_all()
    wait_until("the exec grant is revoked", lambda: not c.may_exec(c.tenant))
    with pytest.raises(NotFound):
        c.kube.get(ROLE_BINDING, HOOKS_ROLE, c.tenant)
    assert c.node.get(SECRET, "pw", c.tenant)  # the Secrets' grant is another matter


def test_the_garbage_collector_revokes_when_the_last_target_goes(cluster: Cluster) -> None:
    c = cluster
    NodeGrants(c.operator, c.ns).sync_all()
    wait_until("the Secret grant acts", lambda: c.node_may("get", "secrets", c.tenant, name="pw"))
    assert c.node.get(SECRET, "pw", c.tenant)
    c.kube.delete(BACKUP_TARGET, "t", c.tenant)
    # no operator pass here: the Role is owned by the target, its binding by the Role
    for kind in (ROLE, ROLE_BINDING):
        wait_until(f"{kind.kind} {SECRETS_ROLE} collected", lambda kind=kind: not _exists(
            c.kube, kind, SECRETS_ROLE, c.tenant))
    wait_until("the Secret grant is revoked",
               lambda: not c.node_may("get", "secrets", c.tenant, name="pw"))
    with pytest.raises(PermissionDenied):
        c.node.get(SECRET, "pw", c.tenant)


def _exists(kube: ApiKube, kind: Any, name: str, ns: str) -> bool:
    try:
        kube.get(kind, name, ns)
    except NotFound:
        return False
    return True


def test_the_node_plugin_has_no_secret_or_exec_from_the_chart(cluster: Cluster) -> None:
    """Without any grant (a namespace the operator never looked at), cluster-wide: none."""
    c = cluster
    assert not c.node_may("get", "secrets", c.ns, name=CA_SECRET), "the node may read the CA key"
    assert not c.may_exec(c.ns, "statehold-operator-0"), "the node may exec into the operator"
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    for verb in ("get", "list", "watch"):
        assert not c.node_may(verb, "secrets", fresh, name="x" if verb == "get" else "")
    assert not c.may_exec(fresh)
