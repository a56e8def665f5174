"""The chart lets the cluster operator keep the node agents' CA and certificate Secrets
(replicated volumes) in its release namespace, and only there; its Deployment tells it
which namespace that is. Without both, ``statehold operator run --role cluster`` exits at
start on a real server (403 creating Secret statehold-agent-ca, in statehold-system
whatever the release namespace)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statehold.agent import pki
from statehold.controller.agent_certs import CA_SECRET, ensure_ca, ensure_node_certs
from statehold.errors import PermissionDenied
from statehold.kube.kinds import NODE, SECRET
from statehold.kube.memory import MemoryKube
from tests.unit.kube.rbac import RbacKube
from tests.unit.kube.validation import render

RELEASE_NS = "storage"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rules_in(docs: list[dict[str, Any]], account: str, namespace: str) -> list[dict[str, Any]]:
    """What ``account`` may do in ``namespace``: its ClusterRoles, and the Roles bound to
    it by RoleBindings of that namespace."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    rules: list[dict[str, Any]] = []
    for b in docs:
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account
                   for s in b.get("subjects") or []):
            continue
        if b["kind"] == "ClusterRoleBinding":
            rules += roles[("ClusterRole", None, b["roleRef"]["name"])]["rules"]
        elif b["kind"] == "RoleBinding" and b["metadata"]["namespace"] == namespace:
            ref = b["roleRef"]
            key = (ref["kind"], None if ref["kind"] == "ClusterRole" else namespace, ref["name"])
            rules += roles[key]["rules"]
    return rules


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = render.render_chart(name="sh", namespace=RELEASE_NS)
    return docs


def node(kube: MemoryKube, name: str, ip: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
    kube.patch_status(NODE, name, {"addresses": [{"type": "InternalIP", "address": ip}]})


def test_operator_keeps_the_agent_secrets_in_its_namespace(docs: list[dict[str, Any]]) -> None:
    kube = MemoryKube()
    rbac = RbacKube(kube, rules_in(docs, "statehold-operator", RELEASE_NS))
    issuer = pki.Issuer()
    ca = ensure_ca(rbac, RELEASE_NS, issuer)                       # get, create
    assert ensure_ca(rbac, RELEASE_NS, issuer) == ca               # get
    node(kube, "n1", "10.0.0.1")
    node(kube, "n2", "10.0.0.2")
    assert len(ensure_node_certs(rbac, RELEASE_NS, ca, issuer, NOW)) == 2   # list, create
    kube.patch_status(NODE, "n1", {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]})
    kube.delete(NODE, "n2")
    changed = ensure_node_certs(rbac, RELEASE_NS, ca, issuer, NOW + timedelta(days=1))
    assert len(changed) == 2                                         # patch, delete
    assert [s["metadata"]["name"] for s in kube.list(SECRET, RELEASE_NS)] == [
        CA_SECRET, "statehold-agent-n1"]
    assert rbac.denied == []


def test_operator_writes_no_secret_outside_its_namespace(docs: list[dict[str, Any]]) -> None:
    rbac = RbacKube(MemoryKube(), rules_in(docs, "statehold-operator", "databases"))
    with pytest.raises(PermissionDenied):
        ensure_ca(rbac, "databases", pki.Issuer())
    writes = [r for d in docs if d["kind"] == "ClusterRole"
              for r in d["rules"] if "secrets" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get"} for r in writes), writes


def test_operator_deployment_names_its_namespace_for_the_agent_secrets(
        docs: list[dict[str, Any]]) -> None:
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"
                 and d["metadata"]["name"] == "statehold-operator"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--agent-namespace=$(NAMESPACE)" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
