"""The chart lets the cluster operator keep the node agents' CA and certificate Secrets
(replicated volumes) in its release namespace, and only there; its Deployment tells it
which namespace that is. Without both, ``statehold operator run --role cluster`` exits at
start on a real server (403 creating Secret statehold-agent-ca, in statehold-system
whatever the release namespace).

The agents may read what the operator's Role ``statehold-agent-certs`` names and nothing
else: each node certificate Secret by name, never the CA's (issue #12: with ``get`` on
every Secret, an agent could read the CA key and issue itself a controller certificate).
The same checks on a real API server: tests/integration/kube/test_agent_secrets_on_apiserver.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statehold.agent import pki
from statehold.controller.agent_certs import (
    AGENT_ROLE,
    CA_SECRET,
    agent_role,
    ensure_agent_role,
    ensure_ca,
    ensure_node_certs,
    node_secret_name,
)
from statehold.errors import PermissionDenied
from statehold.kube.kinds import NODE, ROLE, SECRET
from statehold.kube.memory import MemoryKube
from tests.unit.kube.rbac import RbacKube
from tests.unit.kube.validation import render

RELEASE_NS = "storage"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rules_in(docs: list[dict[str, Any]], account: str, namespace: str) -> list[dict[str, Any]]:
    """What ``account`` may do in ``namespace``: its ClusterRoles, and the Roles bound to
    it by RoleBindings of that namespace (a Role that is not in ``docs``, as the one the
    operator makes, grants nothing: add it to ``docs`` from the cluster)."""
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
            rules += (roles.get(key) or {}).get("rules") or []
    return rules


def agent_rules(docs: list[dict[str, Any]], kube: MemoryKube,
                namespace: str = RELEASE_NS) -> list[dict[str, Any]]:
    """The agents' rules: the chart's bindings, with the Roles the operator made."""
    return rules_in([*docs, *kube.list(ROLE, namespace)], "statehold-agent", namespace)


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
    # list, create; the agents' Role: get, create
    assert len(ensure_node_certs(rbac, RELEASE_NS, ca, issuer, NOW)) == 3
    kube.patch_status(NODE, "n1", {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]})
    kube.delete(NODE, "n2")
    changed = ensure_node_certs(rbac, RELEASE_NS, ca, issuer, NOW + timedelta(days=1))
    assert len(changed) == 3                                         # patch, delete; Role: patch
    assert [s["metadata"]["name"] for s in kube.list(SECRET, RELEASE_NS)] == [
        CA_SECRET, "statehold-agent-n1"]
    assert rbac.denied == []
    # the Role it may write is that one only: any other name is refused
    with pytest.raises(PermissionDenied):
        rbac.patch(ROLE, "statehold-agent-certs-2", {"rules": []}, RELEASE_NS)


def test_agents_may_get_the_node_certificates_by_name_and_nothing_else(
        docs: list[dict[str, Any]]) -> None:
    kube = MemoryKube()
    issuer = pki.Issuer()
    ca = ensure_ca(kube, RELEASE_NS, issuer)
    node(kube, "n1", "10.0.0.1")
    node(kube, "n2", "10.0.0.2")
    ensure_node_certs(kube, RELEASE_NS, ca, issuer, NOW)
    agent = RbacKube(kube, agent_rules(docs, kube))
    for n in ("n1", "n2"):
        assert agent.get(SECRET, node_secret_name(n), RELEASE_NS)["data"]["tls.key"]
    for forbidden in (lambda: agent.get(SECRET, CA_SECRET, RELEASE_NS),
                      lambda: agent.list(SECRET, RELEASE_NS),
                      lambda: agent.watch(SECRET, RELEASE_NS),
                      lambda: agent.get(SECRET, "statehold-operator-token", RELEASE_NS),
                      lambda: agent.get(ROLE, AGENT_ROLE, RELEASE_NS)):
        with pytest.raises(PermissionDenied):
            forbidden()
    # a Node goes: its Secret leaves the Role with it
    kube.delete(NODE, "n2")
    ensure_node_certs(kube, RELEASE_NS, ca, issuer, NOW)
    agent = RbacKube(kube, agent_rules(docs, kube))
    assert agent.get(SECRET, node_secret_name("n1"), RELEASE_NS)
    with pytest.raises(PermissionDenied):
        agent.get(SECRET, node_secret_name("n2"), RELEASE_NS)
    # the last one goes: no rule at all (an empty resourceNames would allow every name)
    kube.delete(NODE, "n1")
    ensure_node_certs(kube, RELEASE_NS, ca, issuer, NOW)
    assert kube.get(ROLE, AGENT_ROLE, RELEASE_NS)["rules"] == []
    assert [r for r in agent_rules(docs, kube) if "secrets" in r["resources"]] == []


def test_the_agents_role_never_names_the_ca_secret_nor_a_secret_not_ours() -> None:
    kube = MemoryKube()
    issuer = pki.Issuer()
    ca = ensure_ca(kube, RELEASE_NS, issuer)
    node(kube, "ca", "10.0.0.3")   # statehold-agent-<node> would be the CA's Secret
    node(kube, "taken", "10.0.0.4")
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": node_secret_name("taken"), "namespace": RELEASE_NS}, "data": {"x": "eQ=="}})
    ensure_node_certs(kube, RELEASE_NS, ca, issuer, NOW)
    assert node_secret_name("ca") != CA_SECRET
    (rule,) = kube.get(ROLE, AGENT_ROLE, RELEASE_NS)["rules"]
    assert rule == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                    "resourceNames": [node_secret_name("ca")]}
    assert agent_role(RELEASE_NS, [CA_SECRET])["rules"] == []


def test_rules_added_to_the_agents_role_by_hand_are_undone() -> None:
    kube = MemoryKube()
    ensure_agent_role(kube, RELEASE_NS, ["statehold-agent-n1"])
    assert ensure_agent_role(kube, RELEASE_NS, ["statehold-agent-n1"]) is None  # nothing to do
    widened = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    kube.patch(ROLE, AGENT_ROLE, {"rules": widened}, RELEASE_NS)
    assert ensure_agent_role(kube, RELEASE_NS, ["statehold-agent-n1"]) == (
        "agents may read ['statehold-agent-n1']")
    assert kube.get(ROLE, AGENT_ROLE, RELEASE_NS)["rules"] == agent_role(
        RELEASE_NS, ["statehold-agent-n1"])["rules"]


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
