"""Where each node's agent listens, and which node a volume's record names primary: what
the operator's client of the node agents (``statehold.agent.fleet``) asks the cluster.

An agent listens on its Node's **InternalIP** and the agents' port (the chart's
``agent.port``, passed to the operator as ``--agent-port``): the agent DaemonSet runs on the
host network and binds ``status.hostIP``, the address the kubelet reports as the Node's
InternalIP (replication.md §8.4). The address is read fresh from the Node on each call, so
a node that comes back with another address is reached there. :func:`agent_address` is
pure; :class:`KubeDirectory` reads through the Kube facade.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from statehold.errors import NotFound
from statehold.kube.facade import Kube
from statehold.kube.kinds import NODE, REPLICATED_VOLUME

DEFAULT_PORT = 7443


def internal_ips(node: Mapping[str, Any]) -> tuple[str, ...]:
    """The Node's InternalIP addresses, in the order the kubelet reports them."""
    addresses = (node.get("status") or {}).get("addresses") or []
    return tuple(str(a["address"]) for a in addresses
                 if a.get("type") == "InternalIP" and a.get("address"))


def agent_address(node: Mapping[str, Any], port: int) -> str:
    """``IP:PORT`` (``[IPv6]:PORT``) of the agent on ``node``: its first InternalIP."""
    ips = internal_ips(node)
    if not ips:
        name = (node.get("metadata") or {}).get("name", "?")
        raise NotFound(f"node {name} reports no InternalIP address")
    ip = ips[0]
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


class KubeDirectory:
    """The fleet's :class:`~statehold.agent.fleet.Directory` over the Kube facade."""

    def __init__(self, kube: Kube, port: int = DEFAULT_PORT) -> None:
        self.kube = kube
        self.port = port

    def address(self, node: str) -> str:
        return agent_address(self.kube.get(NODE, node), self.port)

    def primary(self, volume: str) -> str | None:
        for rv in self.kube.list(REPLICATED_VOLUME):
            if (rv.get("spec") or {}).get("volumeHandle") == volume:
                return str((rv.get("status") or {}).get("primary") or "") or None
        return None
