"""The node plugin's grants (``node_grants``) in memory: the operator runs with the chart's
operator rules, the node plugin with the chart's node rules plus what the operator's
RoleBindings give it (``tests.unit.kube.rbac.as_node_plugin``). What they decide is
checked on a real API server in tests/integration/kube/test_node_grants_on_apiserver.py."""

from __future__ import annotations

from typing import Any

import pytest

from statehold.controller.agent_certs import CA_SECRET
from statehold.controller.node_grants import (
    HOOKS_ROLE,
    NODE_ACCOUNT,
    SECRETS_ROLE,
    NodeGrants,
)
from statehold.controller.problems import Problem
from statehold.controller.statefulset_backups import hooks_granted
from statehold.controller.targets import resolve_target
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.facade import ExecResult
from statehold.kube.kinds import BACKUP_TARGET, POD, ROLE, ROLE_BINDING, SECRET, STATEFUL_SET_BACKUP
from statehold.kube.memory import MemoryKube
from tests.unit.controller.cluster import NS, path_target
from tests.unit.controller.statefulset_cluster import hook, running_pods
from tests.unit.kube.rbac import RbacKube, kept_rules, rules_for
from tests.unit.kube.validation import render

RELEASE = "statehold-system"
API = "statehold.io/v1alpha1"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render.render_chart()


@pytest.fixture
def operator(memory_kube: MemoryKube, docs: list[dict[str, Any]]) -> RbacKube:
    return RbacKube(memory_kube, rules_for(docs, "statehold-operator"))


@pytest.fixture
def node(memory_kube: MemoryKube, docs: list[dict[str, Any]]) -> RbacKube:
    """The node plugin in NS: the chart's ClusterRoles (its Roles are in the release
    namespace) and the operator's grants."""
    return RbacKube(memory_kube, rules_for(docs, "statehold-node", NS),
                    kept=kept_rules(memory_kube, docs, "statehold-node", RELEASE))


def s3_target(kube: MemoryKube, name: str, password: str, creds: str, ns: str = NS) -> None:
    kube.create({"apiVersion": API, "kind": "BackupTarget", "metadata": {"name": name, "namespace": ns},
                 "spec": {"passwordSecretRef": {"name": password}, "s3": {
                     "endpoint": "http://127.0.0.1:9", "bucket": "bucket",
                     "credentialsSecretRef": {"name": creds}}}})


def any_secret(kube: MemoryKube, name: str, ns: str, **extra: Any) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                 "stringData": {"password": "x", "accessKeyId": "a", "secretAccessKey": "s"},
                 **extra})


def granted(kube: MemoryKube, ns: str = NS) -> list[str]:
    rules = kube.get(ROLE, SECRETS_ROLE, ns).get("rules") or []
    return [n for r in rules for n in r["resourceNames"]]


def set_backup(kube: MemoryKube, name: str, *, hooks: bool = True) -> None:
    spec: dict[str, Any] = {"statefulSetName": "db", "target": "t"}
    if hooks:
        spec["hooks"] = {"pre": [hook("sync", "sync")]}
    kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                 "metadata": {"name": name, "namespace": NS}, "spec": spec})


def test_the_node_may_get_exactly_the_secrets_its_namespaces_targets_name(
        memory_kube: MemoryKube, operator: RbacKube, node: RbacKube) -> None:
    for name in ("pw", "creds", "other"):
        any_secret(memory_kube, name, NS)
    any_secret(memory_kube, "pw", "elsewhere")
    path_target(memory_kube)
    s3_target(memory_kube, "s3", "pw", "creds")
    with pytest.raises(PermissionDenied):  # nothing from the chart
        node.get(SECRET, "pw", NS)
    changed = NodeGrants(operator, RELEASE).sync_all()
    assert changed and operator.denied == []
    assert granted(memory_kube) == ["creds", "pw"]
    role = memory_kube.get(ROLE, SECRETS_ROLE, NS)
    assert {(o["kind"], o["name"]) for o in role["metadata"]["ownerReferences"]} == {
        ("BackupTarget", "t"), ("BackupTarget", "s3")}
    bound = memory_kube.get(ROLE_BINDING, SECRETS_ROLE, NS)
    assert bound["subjects"] == [{"kind": "ServiceAccount", "name": NODE_ACCOUNT,
                                  "namespace": RELEASE}]
    assert bound["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                "name": SECRETS_ROLE}
    assert bound["metadata"]["ownerReferences"][0]["uid"] == role["metadata"]["uid"]
    assert node.get(SECRET, "pw", NS) and node.get(SECRET, "creds", NS)
    for ns, name in ((NS, "other"), ("elsewhere", "pw")):
        with pytest.raises(PermissionDenied):
            node.get(SECRET, name, ns)
    with pytest.raises(PermissionDenied):
        node.list(SECRET, NS)
    got = resolve_target(node, NS, "s3")  # as the node side reads it
    assert (got.password, got.access_key, got.secret_key) == ("x", "a", "s")
    assert NodeGrants(operator, RELEASE).sync_all() == []  # nothing more to do


def test_never_the_agents_ca_nor_their_certificates_nor_a_token(
        memory_kube: MemoryKube, operator: RbacKube, node: RbacKube) -> None:
    any_secret(memory_kube, CA_SECRET, RELEASE)
    any_secret(memory_kube, "statehold-agent-n1", RELEASE)
    any_secret(memory_kube, "token", NS, type="kubernetes.io/service-account-token")
    s3_target(memory_kube, "ca", CA_SECRET, "statehold-agent-n1", ns=RELEASE)
    path_target(memory_kube, password_secret="token")
    assert NodeGrants(operator, RELEASE).sync_all() == []
    for ns in (RELEASE, NS):  # no name: no Role at all (an empty one would grant every name)
        with pytest.raises(NotFound):
            memory_kube.get(ROLE, SECRETS_ROLE, ns)
    with pytest.raises(PermissionDenied):
        node.get(SECRET, CA_SECRET, RELEASE)
    # the node side waits, clearly, and never fails for it
    with pytest.raises(Problem) as got:
        resolve_target(node, RELEASE, "ca")
    assert got.value.reason == "SecretNotGranted" and not got.value.permanent
    # a target that also names a usable Secret: that one only
    any_secret(memory_kube, "pw", RELEASE)
    s3_target(memory_kube, "mixed", "pw", CA_SECRET, ns=RELEASE)
    NodeGrants(operator, RELEASE).sync_all()
    assert granted(memory_kube, RELEASE) == ["pw"]


def test_the_grant_follows_the_targets_and_goes_with_the_last(
        memory_kube: MemoryKube, operator: RbacKube, node: RbacKube) -> None:
    any_secret(memory_kube, "pw", NS)
    any_secret(memory_kube, "pw2", NS)
    path_target(memory_kube)
    grants = NodeGrants(operator, RELEASE)
    grants.sync(NS)
    assert granted(memory_kube) == ["pw"]
    memory_kube.patch(  # a hand edit widening the grant is undone
        ROLE, SECRETS_ROLE, {"rules": [{"apiGroups": [""], "resources": ["secrets"],
                                        "verbs": ["get", "list"]}]}, NS)
    memory_kube.patch(BACKUP_TARGET, "t", {"spec": {"passwordSecretRef": {"name": "pw2"}}}, NS)
    grants.sync(NS)
    assert memory_kube.get(ROLE, SECRETS_ROLE, NS)["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["pw2"]}]
    with pytest.raises(PermissionDenied):
        node.get(SECRET, "pw", NS)
    memory_kube.delete(BACKUP_TARGET, "t", NS)
    assert grants.sync_all()  # this process granted there: it looks again, and revokes
    for kind in (ROLE, ROLE_BINDING):
        with pytest.raises(NotFound):
            memory_kube.get(kind, SECRETS_ROLE, NS)
    with pytest.raises(PermissionDenied):
        node.get(SECRET, "pw2", NS)


def test_exec_only_while_a_hooked_backup_is_pending_or_running(
        memory_kube: MemoryKube, operator: RbacKube, node: RbacKube) -> None:
    running_pods(memory_kube)
    memory_kube.on_exec(lambda call: ExecResult(0, "ran", ""))
    grants = NodeGrants(operator, RELEASE)
    set_backup(memory_kube, "plain", hooks=False)
    grants.sync_all()
    with pytest.raises(NotFound):
        memory_kube.get(ROLE_BINDING, HOOKS_ROLE, NS)
    with pytest.raises(Problem) as got:  # the node side waits before running any hook
        hooks_granted(node, NS, "db", [0, 1, 2], {"pre": [hook("sync", "sync")]})
    assert got.value.reason == "HooksNotGranted" and not got.value.permanent
    set_backup(memory_kube, "hooked")
    grants.sync(NS)
    bound = memory_kube.get(ROLE_BINDING, HOOKS_ROLE, NS)
    assert bound["roleRef"]["kind"] == "ClusterRole" and bound["roleRef"]["name"] == HOOKS_ROLE
    assert [o["name"] for o in bound["metadata"]["ownerReferences"]] == ["hooked"]
    hooks_granted(node, NS, "db", [0, 1, 2], {"pre": [hook("sync", "sync")]})
    assert node.exec("db-1", NS, ["true"]).stdout == "ran"
    assert node.may("get", POD, NS) and not node.may("get", POD, "elsewhere")
    memory_kube.patch_status(STATEFUL_SET_BACKUP, "hooked", {"phase": "Running"}, NS)
    assert grants.sync_all() == []
    memory_kube.patch_status(STATEFUL_SET_BACKUP, "hooked", {"phase": "Completed"}, NS)
    assert grants.sync_all() == [f"{NS}: the node plugin may exec into no pod (no hooked "
                                 "backup runs)"]
    with pytest.raises(PermissionDenied):
        node.exec("db-1", NS, ["true"])
    assert operator.denied == []


def test_no_exec_in_the_release_namespace(memory_kube: MemoryKube, operator: RbacKube) -> None:
    """The operator's pods (and token) live there: a hooked backup there waits forever
    rather than open them to every node."""
    memory_kube.create({"apiVersion": API, "kind": "StatefulSetBackup",
                        "metadata": {"name": "hooked", "namespace": RELEASE},
                        "spec": {"statefulSetName": "db", "target": "t",
                                 "hooks": {"post": [hook("sync", "sync")]}}})
    assert NodeGrants(operator, RELEASE).sync_all() == []
    with pytest.raises(NotFound):
        memory_kube.get(ROLE_BINDING, HOOKS_ROLE, RELEASE)


def test_the_operator_grants_before_it_pins_and_on_a_ticker(
        memory_kube: MemoryKube, operator: RbacKube, fake_clock: Any) -> None:
    from statehold.controller.operator import cluster_registry, cluster_tickers

    grants = NodeGrants(operator, RELEASE)
    reg = cluster_registry(memory_kube, fake_clock, grants=grants)
    # kopf's registry keeps registration order, which is the order it runs one object's
    # handlers in: the namespace's grants come before the backup is pinned to a node
    changing = reg._changing.get_all_handlers()
    for plural, then in (("statefulsetbackups", "assign"), ("backuptargets", "target")):
        order = [str(h.id).split("/")[0] for h in changing if h.selector.any_name == plural]
        assert order.index("node-grants") < order.index(then), order
    any_secret(memory_kube, "pw", NS)
    path_target(memory_kube)
    (grant,) = {h.fn for h in changing if h.selector.any_name == "backuptargets"
                and str(h.id).startswith("node-grants")}
    grant(name="t", namespace=NS)
    assert granted(memory_kube) == ["pw"]
    (ticker,) = [t for t in cluster_tickers(memory_kube, fake_clock, grants=grants)
                 if t.name == "node-grants"]
    assert ticker.immediate
    memory_kube.delete(BACKUP_TARGET, "t", NS)
    ticker.tick()
    with pytest.raises(NotFound):
        memory_kube.get(ROLE, SECRETS_ROLE, NS)
