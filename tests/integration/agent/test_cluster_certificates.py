"""The agents' certificates in a cluster, with real processes: ``statehold operator run
--role cluster`` (against MemoryKube over HTTP) creates the CA Secret and one certificate
Secret per Node; ``statehold agent serve --certs-secret-namespace`` waits for its node's
Secret, serves with it, answers a client holding the operator's certificate, refuses one
from another CA, and exits 0 (for the kubelet to restart it) once the Secret changes."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from statehold.agent import pki
from statehold.agent.client import AgentClient
from statehold.controller.agent_certs import CA_SECRET, node_secret_name, read_node_certs
from statehold.errors import NotFound, StateholdError
from statehold.kube.kinds import NODE, SECRET
from statehold.kube.memory import MemoryKube
from tests.fixtures.netns import wait_for
from tests.unit.kube.apiserver import serve

NS = "statehold-system"


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)


def secret_of(kube: MemoryKube, name: str) -> dict[str, object] | None:
    try:
        return kube.get(SECRET, name, NS)
    except NotFound:
        return None


@pytest.mark.root
def test_agent_serves_with_the_certificate_the_operator_issued(memory_kube: MemoryKube,
                                                               scratch: Path) -> None:
    memory_kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}})
    memory_kube.patch_status(NODE, "n1", {"addresses": [
        {"type": "InternalIP", "address": "127.0.0.1"}]})
    with serve(memory_kube) as url:
        kubeconfig = scratch / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "memory",
            "clusters": [{"name": "memory", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "memory", "context": {"cluster": "memory", "user": "u"}}]}))
        agent_log = scratch / "agent.log"
        # the agent first: it waits for the Secret the operator has not issued yet
        with process([sys.executable, "-m", "statehold.cli.main", "agent", "serve",
                      "--listen", "127.0.0.1:0", "--certs-secret-namespace", NS,
                      "--kubeconfig", str(kubeconfig), "--node-name", "n1",
                      "--home", str(scratch / "home"), "--interval", "0",
                      "--certs-check-interval", "1", "--grace", "0"], agent_log) as agent, \
                process([sys.executable, "-m", "statehold.cli.main", "operator", "run",
                         "--role", "cluster", "--kubeconfig", str(kubeconfig),
                         "--agent-namespace", NS], scratch / "operator.log") as operator:
            wait_for(lambda: secret_of(memory_kube, node_secret_name("n1")), 60,
                     "the node's certificate Secret")
            assert operator.poll() is None
            ca = secret_of(memory_kube, CA_SECRET)
            assert ca is not None
            ca_cert = base64.b64decode(ca["data"]["ca.crt"])  # type: ignore[index]
            ca_key = base64.b64decode(ca["data"]["ca.key"])  # type: ignore[index]
            port = wait_for(lambda: re.search(r"port=(\d+)", agent_log.read_text()), 60,
                            f"the agent serving\n{agent_log.read_text()}").group(1)
            own = pki.issue(pki.KeyPair(ca_cert, ca_key), "statehold-operator", role="controller")
            with AgentClient(f"127.0.0.1:{port}", pki.Bundle(ca_cert, own), timeout=10,
                             server_name="n1") as client:
                reply = client.ping()
            assert (reply.node, reply.caller) == ("n1", "controller/statehold-operator")
            stranger = pki.create_ca()
            other = pki.Bundle(stranger.cert, pki.issue(stranger, "statehold-operator",
                                                        role="controller"))
            with AgentClient(f"127.0.0.1:{port}", other, timeout=10) as client, \
                    pytest.raises(StateholdError):
                client.ping()
            # the operator issues new certificates (say, the node's address changed)
            fresh = pki.issue(pki.KeyPair(ca_cert, ca_key), "n1", ips=("127.0.0.1", "127.0.0.2"))
            memory_kube.patch(SECRET, node_secret_name("n1"), {"data": {
                "tls.crt": base64.b64encode(fresh.cert).decode(),
                "tls.key": base64.b64encode(fresh.key).decode()}}, NS)
            assert agent.wait(60) == 0, agent_log.read_text()[-3000:]
            certs = read_node_certs(memory_kube.get(SECRET, node_secret_name("n1"), NS))
            assert certs.cert == fresh.cert
