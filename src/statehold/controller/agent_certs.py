"""The node agents' cluster CA, kept in a Secret, and one Secret per node holding that
node's certificate (docs/design/replication.md §8.4).

* ``<namespace>/statehold-agent-ca`` (Opaque: ``ca.crt``, ``ca.key``): created by the
  cluster operator on its first start (:func:`ensure_ca`; two replicas racing both end up
  with the one that was created first). Nothing else writes it.
* ``<namespace>/statehold-agent-<node>`` (``kubernetes.io/tls``: ``ca.crt``, ``tls.crt``,
  ``tls.key``): for every Node, a certificate naming the node (CN and DNS SAN) with its
  InternalIP addresses as IP SANs, role ``node``. Issued again when the CA changed, the
  node's addresses changed, or it expires within :data:`RENEW_BEFORE`; deleted once its
  Node is gone (:func:`ensure_node_certs`, on the operator's ticker). The node's agent reads
  its own Secret at start (``statehold agent serve --certs-secret-namespace``) and restarts
  when it changes.
* ``<namespace>/statehold-agent-certs`` (Role, :data:`AGENT_ROLE`): the agents' only grant
  on Secrets, ``get`` on exactly the names of the node certificate Secrets this module
  manages (:func:`ensure_agent_role`, after every pass). The chart binds it to the agents'
  ServiceAccount; it never names the CA Secret, so the CA key stays out of the agents'
  reach. RBAC has no prefix match, hence a Role kept in step with the Nodes. No Nodes: no
  rule at all (an empty ``resourceNames`` would mean *every* Secret).
* The operator's own client certificate (CN ``statehold-operator``, role ``controller``)
  is issued in memory from the CA at start and renewed the same way; it is never stored.

The certificate operations come through :class:`Issuer` (``statehold.agent.pki.Issuer``
in the operator process): the controller does not import the agent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from statehold.controller.agent_directory import internal_ips
from statehold.errors import AlreadyExists, Corrupt, NotFound
from statehold.kube.facade import Kube, Obj
from statehold.kube.kinds import NODE, ROLE, SECRET

log = logging.getLogger("statehold.operator.certs")

CA_SECRET = "statehold-agent-ca"
NODE_SECRET_PREFIX = "statehold-agent-"
OPERATOR_NAME = "statehold-operator"
RENEW_BEFORE = timedelta(days=30)
NODE_ANNOTATION = "statehold.io/node"
COMPONENT = "app.kubernetes.io/component"
NODE_CERT_COMPONENT = "agent-certificate"
CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
AGENT_ROLE = "statehold-agent-certs"
"""The Role granting the agents ``get`` on the node certificate Secrets, by name (the chart
binds it to ServiceAccount ``statehold-agent``; the operator writes its rules)."""
AGENT_ROLE_COMPONENT = "agent-certificate-access"


class Issuer(Protocol):
    """Certificate operations on PEM bytes (``statehold.agent.pki.Issuer``)."""

    def new_ca(self) -> tuple[bytes, bytes]:
        """A new CA: (certificate, key)."""
        ...

    def issue(self, ca_cert: bytes, ca_key: bytes, name: str, ips: Sequence[str],
              role: str) -> tuple[bytes, bytes]:
        """A leaf certificate for ``name``: (certificate, key)."""
        ...

    def describe(self, cert: bytes) -> tuple[tuple[str, ...], datetime]:
        """(IP SANs, end of validity)."""
        ...


@dataclass(frozen=True, slots=True)
class CA:
    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class NodeCerts:
    """What a node's agent reads from its Secret."""

    ca: bytes
    cert: bytes
    key: bytes


def node_secret_name(node: str) -> str:
    """``statehold-agent-<node>``; a node name too long for that, or one that would name the
    CA's Secret (a Node called ``ca``), gets its hash instead."""
    name = NODE_SECRET_PREFIX + node
    if len(name) <= 253 and name != CA_SECRET:
        return name
    return NODE_SECRET_PREFIX + hashlib.sha256(node.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(secret: Obj, key: str) -> bytes:
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        raise Corrupt(f"Secret {secret['metadata'].get('name')} has no {key}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Corrupt(f"Secret {secret['metadata'].get('name')}: {key} is not base64") from exc


def read_node_certs(secret: Obj) -> NodeCerts:
    """The CA certificate and the node's pair from its Secret (Corrupt when incomplete)."""
    return NodeCerts(_field(secret, CA_CERT), _field(secret, TLS_CERT), _field(secret, TLS_KEY))


def ensure_ca(kube: Kube, namespace: str, issuer: Issuer) -> CA:
    """The cluster CA from its Secret, created first if there is none."""
    try:
        secret = kube.get(SECRET, CA_SECRET, namespace)
    except NotFound:
        cert, key = issuer.new_ca()
        try:
            kube.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                         "metadata": {"name": CA_SECRET, "namespace": namespace, "labels": {
                             "app.kubernetes.io/managed-by": "statehold", COMPONENT: "agent-ca"}},
                         "data": {CA_CERT: _b64(cert), CA_KEY: _b64(key)}})
            log.info("event=agent_ca_created secret=%s/%s", namespace, CA_SECRET)
            return CA(cert, key)
        except AlreadyExists:  # another operator replica made it first: use that one
            secret = kube.get(SECRET, CA_SECRET, namespace)
    return CA(_field(secret, CA_CERT), _field(secret, CA_KEY))


def issue_operator(ca: CA, issuer: Issuer) -> tuple[bytes, bytes]:
    """The operator's client certificate (role ``controller``): (certificate, key)."""
    return issuer.issue(ca.cert, ca.key, OPERATOR_NAME, (), "controller")


def due(cert: bytes, ips: Sequence[str], issuer: Issuer, now: datetime) -> str | None:
    """Why ``cert`` must be issued again (None: it is fine)."""
    have, not_after = issuer.describe(cert)
    if not_after - now < RENEW_BEFORE:
        return f"expires {not_after.isoformat()}"
    if sorted(have) != sorted(ips):
        return f"addresses {sorted(have)} -> {sorted(ips)}"
    return None


def _node_reason(secret: Obj | None, ca: CA, ips: Sequence[str], issuer: Issuer,
                 now: datetime) -> str | None:
    if secret is None:
        return "new"
    try:
        certs = read_node_certs(secret)
    except Corrupt as exc:
        return str(exc)
    if certs.ca != ca.cert:
        return "the CA changed"
    return due(certs.cert, ips, issuer, now)


def ensure_node_certs(kube: Kube, namespace: str, ca: CA, issuer: Issuer,
                      now: datetime) -> list[str]:
    """A current certificate Secret for every Node; those of Nodes gone, deleted. Returns
    what changed, one line each."""
    changed: list[str] = []
    secrets = {s["metadata"]["name"]: s for s in kube.list(
        SECRET, namespace, label_selector={COMPONENT: NODE_CERT_COMPONENT})}
    nodes = {n["metadata"]["name"]: n for n in kube.list(NODE)}
    readable: set[str] = set()  # the node Secrets the agents may read: ours, of a Node
    for node, obj in sorted(nodes.items()):
        name = node_secret_name(node)
        ips = internal_ips(obj)
        secret = secrets.get(name)
        reason = _node_reason(secret, ca, ips, issuer, now)
        if reason is None:
            readable.add(name)
            continue
        cert, key = issuer.issue(ca.cert, ca.key, node, ips, "node")
        data = {CA_CERT: _b64(ca.cert), TLS_CERT: _b64(cert), TLS_KEY: _b64(key)}
        if secret is None:
            try:
                kube.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                             "metadata": {"name": name, "namespace": namespace,
                                          "labels": {"app.kubernetes.io/managed-by": "statehold",
                                                     COMPONENT: NODE_CERT_COMPONENT},
                                          "annotations": {NODE_ANNOTATION: node}},
                             "data": data})
            except AlreadyExists:  # not labelled as ours: leave it, say so
                log.warning("event=agent_cert_name_taken secret=%s/%s", namespace, name)
                continue
        else:
            kube.patch(SECRET, name, {"data": data}, namespace)
        readable.add(name)
        changed.append(f"issued {node} ({reason})")
        log.info("event=agent_cert_issued node=%s reason=%r ips=%s", node, reason, list(ips))
    granted = ensure_agent_role(kube, namespace, sorted(readable))
    if granted is not None:
        changed.append(granted)
    wanted = {node_secret_name(n) for n in nodes}
    for name, secret in sorted(secrets.items()):
        if name not in wanted:
            with contextlib.suppress(NotFound):
                kube.delete(SECRET, name, namespace)
            node = (secret["metadata"].get("annotations") or {}).get(NODE_ANNOTATION, "?")
            changed.append(f"deleted {name} (node {node} is gone)")
            log.info("event=agent_cert_deleted secret=%s/%s node=%s", namespace, name, node)
    return changed


def agent_role(namespace: str, secret_names: Sequence[str]) -> Obj:
    """The Role letting the agents ``get`` exactly ``secret_names`` (never the CA's Secret);
    no rule at all when there are none, as an empty ``resourceNames`` allows every name."""
    names = sorted(set(secret_names) - {CA_SECRET})
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
              "resourceNames": names}] if names else []
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": AGENT_ROLE, "namespace": namespace, "labels": {
                "app.kubernetes.io/managed-by": "statehold", COMPONENT: AGENT_ROLE_COMPONENT}},
            "rules": rules}


def ensure_agent_role(kube: Kube, namespace: str, secret_names: Sequence[str]) -> str | None:
    """Make the agents' Role grant ``get`` on ``secret_names`` and nothing else (rules that
    differ, added by hand or left from before, are replaced). Returns what changed, if
    anything. The API server lets the operator write it only because it may get those
    Secrets itself (RBAC escalation prevention)."""
    want = agent_role(namespace, secret_names)
    names = want["rules"][0]["resourceNames"] if want["rules"] else []
    try:
        current = kube.get(ROLE, AGENT_ROLE, namespace)
    except NotFound:
        try:
            kube.create(want)
        except AlreadyExists:  # another operator replica made it first: correct it below
            current = kube.get(ROLE, AGENT_ROLE, namespace)
        else:
            log.info("event=agent_role_created role=%s/%s secrets=%s", namespace, AGENT_ROLE, names)
            return f"agents may read {names}"
    if (current.get("rules") or []) == want["rules"]:
        return None
    kube.patch(ROLE, AGENT_ROLE, {"rules": want["rules"]}, namespace)
    log.info("event=agent_role_updated role=%s/%s secrets=%s", namespace, AGENT_ROLE, names)
    return f"agents may read {names}"
