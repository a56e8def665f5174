"""The chart's pieces for replicated volumes: the node agents' DaemonSet (host network, the
Node's address and the agents' port, its certificate from its Secret), the operator told
the port, the CSI plugin reading records at NodeStage, and RBAC that lets each of them do
exactly that (through the rendered rules); ``agent.enabled: false`` renders none of it and
tells the operator so."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from statehold.agent import pki
from statehold.cli.agent import _secret_certs, read_secret_certs
from statehold.controller.agent_certs import ensure_ca, ensure_node_certs
from statehold.csi.replicated import Replicas
from statehold.engine.node import Node
from statehold.errors import PermissionDenied
from statehold.kube.facade import Obj
from statehold.kube.kinds import NODE, REPLICATED_VOLUME, Kind
from statehold.kube.memory import MemoryKube
from tests.unit.kube.rbac import RbacKube, rules_for
from tests.unit.kube.test_rbac_agent_certs import NOW, RELEASE_NS, agent_rules
from tests.unit.kube.validation import render, validate_object


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = render.render_chart(name="sh", namespace=RELEASE_NS)
    return out


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def test_agents_run_on_the_host_network_at_the_nodes_address(docs: list[dict[str, Any]]) -> None:
    ds = one(docs, "DaemonSet", "statehold-agent")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["serviceAccountName"] == "statehold-agent"
    agent = containers(ds)["agent"]
    assert agent["args"][:2] == ["agent", "serve"]
    assert {"--listen=$(NODE_IP):7443", "--node-name=$(NODE_NAME)",
            "--certs-secret-namespace=$(NAMESPACE)", "--home=/var/lib/statehold"} <= set(agent["args"])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in agent["env"]}
    assert (env["NODE_IP"], env["NODE_NAME"], env["NAMESPACE"]) == (
        "status.hostIP", "spec.nodeName", "metadata.namespace")
    assert agent["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/lib/statehold"]["mountPropagation"] == "Bidirectional"
    assert "/dev" in mounts
    # on the nodes of the node pods, whose pools hold the copies
    node_pods = one(docs, "DaemonSet", "statehold-node")["spec"]["template"]["spec"]
    assert spec.get("tolerations") == node_pods.get("tolerations")
    operator = containers(one(docs, "Deployment", "statehold-operator"))["operator"]
    assert "--agent-port=7443" in operator["args"] and "--no-replication" not in operator["args"]
    assert "--no-move-on-cordon" not in operator["args"]  # moves on cordon by default
    assert "--cluster" in containers(one(docs, "DaemonSet", "statehold-node"))["statehold-plugin"]["args"]


def test_other_agent_values_render_valid_objects() -> None:
    docs = render.render_chart({"agent": {"port": 9443, "intervalSeconds": 2, "metricsPort": 9444}},
                               name="sh", namespace=RELEASE_NS)
    for doc in docs:
        validate_object(doc)
    agent = containers(one(docs, "DaemonSet", "statehold-agent"))["agent"]
    assert {"--listen=$(NODE_IP):9443", "--interval=2",
            "--metrics-listen=$(NODE_IP):9444"} <= set(agent["args"])
    operator = containers(one(docs, "Deployment", "statehold-operator"))["operator"]
    assert "--agent-port=9443" in operator["args"]


def test_move_on_cordon_can_be_turned_off_for_the_whole_cluster() -> None:
    docs = render.render_chart({"agent": {"moveOnCordon": False}}, name="sh", namespace=RELEASE_NS)
    for doc in docs:
        validate_object(doc)
    operator = containers(one(docs, "Deployment", "statehold-operator"))["operator"]
    assert "--no-move-on-cordon" in operator["args"] and "--agent-port=7443" in operator["args"]


def test_without_agents_the_operator_runs_no_replication() -> None:
    docs = render.render_chart({"agent": {"enabled": False}}, name="sh", namespace=RELEASE_NS)
    assert not [d for d in docs if d["metadata"]["name"] in (
        "statehold-agent", "statehold-agent-certs", "statehold-operator-agent-role")]
    operator = containers(one(docs, "Deployment", "statehold-operator"))["operator"]
    assert "--no-replication" in operator["args"]
    assert not [a for a in operator["args"] if a.startswith("--agent-port")]


def test_an_agent_reads_its_certificate_secret_in_the_release_namespace_only(
        docs: list[dict[str, Any]]) -> None:
    kube = MemoryKube()
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}})
    kube.patch_status(NODE, "n1", {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]})
    ca = ensure_ca(kube, RELEASE_NS, pki.Issuer())
    ensure_node_certs(kube, RELEASE_NS, ca, pki.Issuer(), NOW)
    rbac = RbacKube(kube, agent_rules(docs, kube))
    bundle = _secret_certs(rbac, RELEASE_NS, "n1", threading.Event())
    assert bundle is not None and bundle.ca == ca.cert
    assert pki.identify(bundle.own.cert, ca.cert) == pki.Identity("n1", "node")
    assert rbac.denied == []
    elsewhere = RbacKube(kube, agent_rules(docs, kube, "databases"))
    with pytest.raises(PermissionDenied):
        read_secret_certs(elsewhere, "databases", "n1")
    # before the operator granted it, an agent waits (403 is "not yet", as 404 is)
    stop = threading.Event()

    class StopAfterOneRead(RbacKube):
        def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
            try:
                return super().get(kind, name, namespace)
            finally:
                stop.set()

    waiting = StopAfterOneRead(kube, [])
    assert _secret_certs(waiting, RELEASE_NS, "n1", stop) is None
    assert waiting.denied == [("", "secrets", "get")]


def test_the_csi_plugin_may_read_records_and_node_health_at_stage(docs: list[dict[str, Any]]) -> None:
    kube = MemoryKube()
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}})
    rv = kube.create({"apiVersion": REPLICATED_VOLUME.api_version, "kind": "ReplicatedVolume",
                      "metadata": {"name": "pv-1"},
                      "spec": {"volumeHandle": "fast/pv-1", "replicas": 2, "size": 1}})
    kube.replace_status({**rv, "status": {"epoch": 1, "primary": "n1"}})
    rbac = RbacKube(kube, rules_for(docs, "statehold-node"))
    replicas = Replicas(cast(Node, None), "n1", rbac)  # the reads only: no engine needed
    assert replicas._record("fast/pv-1").primary == "n1"
    assert set(replicas._health()) == {"n1"}
    assert rbac.denied == []
