"""The agents' cluster CA in a Secret and one certificate Secret per node (MemoryKube and
the real certificate operations): created once, shared by racing operators, issued per
Node with its InternalIPs, issued again when the addresses change or expiry nears, deleted
with the Node; the operator's certificate and a node's are accepted by each other's CA;
where each agent is reached."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from statehold.agent import pki
from statehold.controller import agent_certs
from statehold.controller.agent_certs import (
    AGENT_ROLE,
    CA_SECRET,
    ensure_ca,
    ensure_node_certs,
    issue_operator,
    node_secret_name,
    read_node_certs,
)
from statehold.controller.agent_directory import KubeDirectory, agent_address
from statehold.errors import NotFound
from statehold.kube.facade import Obj
from statehold.kube.kinds import NODE, REPLICATED_VOLUME, ROLE, SECRET
from statehold.kube.memory import MemoryKube

NS = "statehold-system"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(kube: MemoryKube, name: str, *ips: str) -> None:
    kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
    kube.patch_status(NODE, name, {"addresses": [{"type": "Hostname", "address": name}]
                                   + [{"type": "InternalIP", "address": ip} for ip in ips]})


def test_the_ca_is_created_once_and_kept() -> None:
    kube = MemoryKube()
    first = ensure_ca(kube, NS, pki.Issuer())
    again = ensure_ca(kube, NS, pki.Issuer())
    assert first == again
    stored = kube.get(SECRET, CA_SECRET, NS)
    assert base64.b64decode(stored["data"]["ca.key"]) == first.key


def test_an_operator_that_loses_the_race_uses_the_ca_that_won() -> None:
    kube = MemoryKube()

    class Racing(pki.Issuer):
        def new_ca(self) -> tuple[bytes, bytes]:
            made = super().new_ca()
            if not racer:  # another replica creates its CA between our read and our create
                racer.append(ensure_ca(kube, NS, pki.Issuer()))
            return made

    racer: list[agent_certs.CA] = []
    assert ensure_ca(kube, NS, Racing()) == racer[0]


def test_every_node_gets_a_certificate_naming_it_and_its_addresses() -> None:
    kube = MemoryKube()
    node(kube, "n1", "10.0.0.1")
    node(kube, "n2", "10.0.0.2", "fd00::2")
    ca = ensure_ca(kube, NS, pki.Issuer())
    assert ensure_node_certs(kube, NS, ca, pki.Issuer(), NOW) == [
        "issued n1 (new)", "issued n2 (new)",
        "agents may read ['statehold-agent-n1', 'statehold-agent-n2']"]
    certs = read_node_certs(kube.get(SECRET, node_secret_name("n2"), NS))
    assert certs.ca == ca.cert
    facts = pki.facts(certs.cert)
    assert (facts.name, facts.ips) == ("n2", ("10.0.0.2", "fd00::2"))
    # the node's pair and the operator's are each accepted under the CA
    assert pki.identify(certs.cert, ca.cert) == pki.Identity("n2", "node")
    cert, _key = issue_operator(ca, pki.Issuer())
    assert pki.identify(cert, ca.cert) == pki.Identity("statehold-operator", "controller")
    assert ensure_node_certs(kube, NS, ca, pki.Issuer(), NOW) == []  # nothing due


def test_a_changed_address_or_a_near_expiry_issues_again_and_a_gone_node_loses_its_secret() -> None:
    kube = MemoryKube()
    node(kube, "n1", "10.0.0.1")
    node(kube, "n2", "10.0.0.2")
    ca = ensure_ca(kube, NS, pki.Issuer())
    ensure_node_certs(kube, NS, ca, pki.Issuer(), NOW)
    before = read_node_certs(kube.get(SECRET, node_secret_name("n1"), NS))
    kube.patch_status(NODE, "n1", {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]})
    kube.delete(NODE, "n2")
    changed = ensure_node_certs(kube, NS, ca, pki.Issuer(), NOW)
    assert changed == ["issued n1 (addresses ['10.0.0.1'] -> ['10.0.0.9'])",
                       "agents may read ['statehold-agent-n1']",
                       "deleted statehold-agent-n2 (node n2 is gone)"]
    after = read_node_certs(kube.get(SECRET, node_secret_name("n1"), NS))
    assert after.cert != before.cert and pki.facts(after.cert).ips == ("10.0.0.9",)
    with pytest.raises(NotFound):
        kube.get(SECRET, node_secret_name("n2"), NS)
    late = datetime.now(UTC) + timedelta(days=340)  # the year's certificate expires in < 30 days
    [reissued] = ensure_node_certs(kube, NS, ca, pki.Issuer(), late)
    assert reissued.startswith("issued n1 (expires ")


def test_a_secret_of_that_name_not_made_by_us_is_left_alone() -> None:
    kube = MemoryKube()
    node(kube, "n1", "10.0.0.1")
    theirs: Obj = {"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": node_secret_name("n1"), "namespace": NS},
                   "data": {"x": "eQ=="}}
    kube.create(theirs)
    ca = ensure_ca(kube, NS, pki.Issuer())
    # nor readable by the agents: the Role they get is made, naming nothing
    assert ensure_node_certs(kube, NS, ca, pki.Issuer(), NOW) == ["agents may read []"]
    assert kube.get(SECRET, node_secret_name("n1"), NS)["data"] == {"x": "eQ=="}
    assert kube.get(ROLE, AGENT_ROLE, NS)["rules"] == []


def test_a_very_long_node_name_gets_a_hashed_secret_name() -> None:
    assert node_secret_name("n1") == "statehold-agent-n1"
    long = "n" * 250
    assert len(node_secret_name(long)) == len("statehold-agent-") + 16
    # and so does a Node named "ca": its Secret must never be the CA's
    assert node_secret_name("ca") != CA_SECRET
    assert len(node_secret_name("ca")) == len("statehold-agent-") + 16


def test_agents_are_reached_at_their_nodes_internal_ip() -> None:
    kube = MemoryKube()
    node(kube, "n1", "10.0.0.1")
    node(kube, "n6", "fd00::6")
    node(kube, "bare")
    directory = KubeDirectory(kube, 7443)
    assert directory.address("n1") == "10.0.0.1:7443"
    assert directory.address("n6") == "[fd00::6]:7443"
    with pytest.raises(NotFound):
        directory.address("bare")
    with pytest.raises(NotFound):
        directory.address("nobody")
    assert agent_address({"status": {"addresses": [{"type": "InternalIP", "address": "1.2.3.4"}]}},
                         1) == "1.2.3.4:1"


def test_the_directory_names_the_recorded_primary() -> None:
    kube = MemoryKube()
    rv = kube.create({"apiVersion": REPLICATED_VOLUME.api_version, "kind": "ReplicatedVolume",
                      "metadata": {"name": "pv-1"},
                      "spec": {"volumeHandle": "fast/pv-1", "replicas": 2, "size": 1}})
    directory = KubeDirectory(kube)
    assert directory.primary("fast/pv-1") is None
    kube.replace_status({**rv, "status": {"epoch": 1, "primary": "n1"}})
    assert directory.primary("fast/pv-1") == "n1"
    assert directory.primary("fast/other") is None
