"""Issue #12 on a real API server (``kube_control_plane``: kube-apiserver v1.20.2 with RBAC,
or the cluster STATEHOLD_TEST_KUBECONFIG names): the node agents may read their own
certificate Secrets and nothing that mints an identity.

The chart's ServiceAccounts, ClusterRoles, Roles and bindings are installed as rendered in
a fresh namespace; the operator's code runs with the ``statehold-operator`` account's token
(so the API server's escalation check sees it grant what it holds), and every question
about the agents is asked with the ``statehold-agent`` account's own token. With two Nodes
reconciled:

* the agents get node 1's and node 2's certificate Secrets (each a ``node`` certificate
  under the cluster CA);
* they cannot get the CA's Secret (its key issues any identity, the controller's too), nor
  any other Secret of the namespace (the operator's ServiceAccount token among them), nor
  list or watch Secrets, nor change the Role that grants them; no Secret holds a
  ``controller`` certificate (the operator's lives in its memory only);
* a deleted Node's Secret leaves the Role (403, not 404, for the agents: RBAC refuses it);
  a Role naming no Secret grants none (an empty ``resourceNames`` would grant all);
* ``statehold agent serve --certs-secret-namespace`` under that account is refused its
  Secret until the operator grants it, then serves mutual TLS with it (root: a real
  process, answering a client that holds a controller certificate from the same CA).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from statehold.agent import pki
from statehold.agent.client import AgentClient
from statehold.cli.agent import read_secret_certs
from statehold.controller.agent_certs import (
    AGENT_ROLE,
    CA_SECRET,
    ensure_agent_role,
    ensure_ca,
    ensure_node_certs,
    node_secret_name,
)
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.client import ApiKube
from statehold.kube.kinds import NODE, ROLE, SECRET
from tests.fixtures.controlplane import ControlPlane
from tests.fixtures.engine import release_home
from tests.fixtures.netns import wait_for
from tests.integration.kube.apiproxy import RecordingProxy
from tests.integration.kube.installing import (
    Admin,
    Installation,
    service_account_token,
    token_kubeconfig,
)
from tests.unit.kube.validation import render

RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding")
ACCOUNTS = ("statehold-operator", "statehold-agent")
TIMEOUT = 60.0
T = TypeVar("T")


def allowed(call: Callable[[], T]) -> T:
    """``call()``'s answer once RBAC lets it through. The API server's authorizer reads
    Roles from an informer, so a Role written a moment ago is enforced a moment later
    (under load, seconds): poll for the grant instead of assuming it is already there."""
    answer: list[T] = []

    def attempt() -> bool:
        try:
            answer.append(call())
        except PermissionDenied:
            return False
        return True

    wait_for(attempt, TIMEOUT, "RBAC to allow the call")
    return answer[0]


def refused(call: Callable[[], object]) -> None:
    """Returns once RBAC refuses ``call`` (403); the same informer lag as :func:`allowed`
    applies to a grant that was just taken away. Until then the call may still pass RBAC
    and get the server's own answer (the object, or 404 for a deleted one); a 403 that
    never comes fails the test."""
    def attempt() -> bool:
        try:
            call()
        except PermissionDenied:
            return True
        except NotFound:
            return False
        return False

    wait_for(attempt, TIMEOUT, "RBAC to refuse the call")


@dataclass
class Cluster:
    ns: str
    root: Path
    admin: Admin
    kube: ApiKube          # admin: sets the scene and reads what the others did
    operator: ApiKube      # the operator's ServiceAccount
    agent: ApiKube         # the agents' ServiceAccount
    tokens: dict[str, tuple[str, bytes]]

    def reconcile(self) -> pki.KeyPair:
        """One pass of the operator's certificate ticker, as its account: the CA."""
        issuer = pki.Issuer()
        ca = ensure_ca(self.operator, self.ns, issuer)
        ensure_node_certs(self.operator, self.ns, ca, issuer, datetime.now(UTC))
        return pki.KeyPair(ca.cert, ca.key)

    def granted(self) -> list[str]:
        """The Secret names the agents' Role grants, as stored."""
        rules = self.kube.get(ROLE, AGENT_ROLE, self.ns).get("rules") or []
        return [n for r in rules for n in r.get("resourceNames") or []]


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="statehold-agent-secrets-", dir="/var/tmp"))
    ns = f"statehold-certs-{uuid.uuid4().hex[:8]}"
    admin = Admin(kube_control_plane.kubeconfig)
    inst = Installation(admin)
    clients: list[ApiKube] = []
    try:
        docs = render.render_chart(name="statehold", namespace=ns)
        for kind in RBAC_KINDS:
            for doc in docs:
                if doc["kind"] == kind:
                    inst.apply(doc)
        tokens = {a: service_account_token(admin, ns, a) for a in ACCOUNTS}
        as_ = {a: ApiKube.from_kubeconfig(str(token_kubeconfig(
            root / f"{a}.kubeconfig", admin.server, pem, tok, a))) for a, (tok, pem) in tokens.items()}
        clients += [*as_.values(), ApiKube.from_kubeconfig(str(kube_control_plane.kubeconfig))]
        yield Cluster(ns, root, admin, clients[-1], as_["statehold-operator"],
                      as_["statehold-agent"], tokens)
    finally:
        try:
            inst.remove()  # the namespace (the Secrets, the operator's Role), the RBAC
        finally:
            for c in clients:
                c.close()
            admin.close()
            shutil.rmtree(root, ignore_errors=True)


def make_node(kube: ApiKube, name: str, ip: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
    kube.patch_status(NODE, name, {"addresses": [{"type": "InternalIP", "address": ip}]})


@pytest.fixture
def nodes(cluster: Cluster) -> Iterator[list[str]]:
    """Two Nodes of this test (no kubelet: objects only), deleted afterwards."""
    names = [f"certs-{uuid.uuid4().hex[:8]}-{i}" for i in (1, 2)]
    try:
        for i, name in enumerate(names, 1):
            make_node(cluster.kube, name, f"10.200.0.{i}")
        yield names
    finally:
        for name in names:
            with contextlib.suppress(NotFound):
                cluster.kube.delete(NODE, name)


def test_agents_get_the_node_certificates_and_no_secret_that_mints_an_identity(
        cluster: Cluster, nodes: list[str]) -> None:
    c = cluster
    ca = c.reconcile()
    mine = {node_secret_name(n) for n in nodes}
    assert mine <= set(c.granted()) and CA_SECRET not in c.granted()
    for n in nodes:
        bundle = allowed(functools.partial(read_secret_certs, c.agent, c.ns, n))
        assert bundle.ca == ca.cert
        assert pki.identify(bundle.own.cert, ca.cert) == pki.Identity(n, "node")

    secrets = {s["metadata"]["name"]: s for s in c.kube.list(SECRET, c.ns)}
    node_secrets = {node_secret_name(n["metadata"]["name"]) for n in c.kube.list(NODE)}
    others = sorted(set(secrets) - node_secrets)
    # not a vacuous loop: the CA and both accounts' token Secrets are among them
    assert {CA_SECRET, "statehold-operator-test-token", "statehold-agent-test-token"} <= set(others)
    for name in others:
        with pytest.raises(PermissionDenied):
            c.agent.get(SECRET, name, c.ns)
    with pytest.raises(PermissionDenied):
        c.agent.list(SECRET, c.ns)
    with pytest.raises(PermissionDenied):
        c.agent.list(SECRET)
    with pytest.raises(PermissionDenied):
        next(iter(c.agent.watch(SECRET, c.ns, timeout=5)))
    # an access review without a name: a grant by name is no grant on every Secret
    assert not c.agent.may("get", SECRET, c.ns) and not c.agent.may("list", SECRET, c.ns)
    # nor may the agents widen their own grant
    with pytest.raises(PermissionDenied):
        c.agent.patch(ROLE, AGENT_ROLE, {"rules": [{"apiGroups": [""], "resources": ["secrets"],
                                                     "verbs": ["get", "list"]}]}, c.ns)
    # the one key that issues certificates is in the CA's Secret; no Secret holds a
    # controller certificate (the operator's is issued in its memory, never stored)
    for name, s in secrets.items():
        data = s.get("data") or {}
        assert ("ca.key" in data) == (name == CA_SECRET), name
        if "tls.crt" in data:
            cert = base64.b64decode(data["tls.crt"])
            assert pki.identify(cert, ca.cert).role == "node", name


def test_a_deleted_nodes_secret_leaves_the_role(cluster: Cluster, nodes: list[str]) -> None:
    c = cluster
    c.reconcile()
    kept, gone = nodes
    assert node_secret_name(gone) in c.granted()
    c.kube.delete(NODE, gone)
    c.reconcile()
    assert node_secret_name(gone) not in c.granted()
    assert node_secret_name(kept) in c.granted()
    with pytest.raises(NotFound):
        c.kube.get(SECRET, node_secret_name(gone), c.ns)
    # refused by RBAC, before the server looks (403, not 404)
    refused(lambda: c.agent.get(SECRET, node_secret_name(gone), c.ns))
    assert allowed(lambda: read_secret_certs(c.agent, c.ns, kept)).own.cert


def test_a_role_naming_no_secret_grants_none(cluster: Cluster, nodes: list[str]) -> None:
    c = cluster
    c.reconcile()
    assert allowed(lambda: read_secret_certs(c.agent, c.ns, nodes[0]))
    ensure_agent_role(c.operator, c.ns, [])  # what the operator writes when no Node is left
    assert c.kube.get(ROLE, AGENT_ROLE, c.ns).get("rules") in (None, [])
    refused(lambda: c.agent.get(SECRET, node_secret_name(nodes[0]), c.ns))
    c.reconcile()
    assert allowed(lambda: read_secret_certs(c.agent, c.ns, nodes[0]))


@contextlib.contextmanager
def agent_process(c: Cluster, node: str, kubeconfig: Path) -> Iterator[subprocess.Popen[bytes]]:
    home = c.root / f"home-{node}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "POD_NAMESPACE") and not k.startswith("STATEHOLD_")}
    with open(c.root / f"agent-{node}.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "statehold.cli.main", "agent", "serve", "--listen", "127.0.0.1:0",
             "--certs-secret-namespace", c.ns, "--kubeconfig", str(kubeconfig),
             "--node-name", node, "--home", str(home), "--interval", "0", "--grace", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        release_home(home)


def answers_to(proxy: RecordingProxy, who: str, path: str) -> list[int]:
    """The status codes ``who`` got for ``path`` so far, in order."""
    return [a.status for a in list(proxy.answers) if a.who == who and a.path.startswith(path)]


@pytest.mark.root
def test_an_agent_is_refused_its_secret_until_granted_then_serves_mutual_tls(
        cluster: Cluster) -> None:
    c = cluster
    node = f"certs-{uuid.uuid4().hex[:8]}-agent"
    token, pem = c.tokens["statehold-agent"]
    (c.root / "upstream-ca.crt").write_bytes(pem)
    proxy = RecordingProxy(c.admin.server, c.root / "upstream-ca.crt", {token: "agent"}, c.root)
    url = proxy.start()
    path = SECRET.path(c.ns, node_secret_name(node))
    log = c.root / f"agent-{node}.log"
    try:
        kubeconfig = token_kubeconfig(c.root / "agent-via-proxy.kubeconfig", url,
                                      proxy.ca.read_bytes(), token, "agent")
        with agent_process(c, node, kubeconfig) as agent:
            # no Node yet, so no grant: the agent's read is refused, and it waits
            wait_for(lambda: 403 in answers_to(proxy, "agent", path), TIMEOUT,
                     "the agent asking for its Secret")
            assert agent.poll() is None, log.read_text()[-3000:]
            make_node(c.kube, node, "127.0.0.1")
            ca = c.reconcile()
            port = wait_for(lambda: re.search(r"port=(\d+)", log.read_text()), TIMEOUT,
                            "the agent serving").group(1)
            assert answers_to(proxy, "agent", path)[-1] == 200
            # of the Secrets, the agent asked for its own only
            assert {a.path.partition("?")[0] for a in list(proxy.answers)
                    if a.who == "agent" and "/secrets" in a.path} == {path}
            own = pki.issue(ca, "statehold-operator", role="controller")
            with AgentClient(f"127.0.0.1:{port}", pki.Bundle(ca.cert, own), timeout=10,
                             server_name=node) as client:
                reply = client.ping()
            assert (reply.node, reply.caller) == (node, "controller/statehold-operator")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, log.read_text()[-3000:]
    finally:
        proxy.stop()
        with contextlib.suppress(NotFound):
            c.kube.delete(NODE, node)
