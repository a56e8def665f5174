"""The chart wires group snapshots across nodes: the node agent serves its local socket in a
host directory that the node plugin mounts too, and the plugin is told that socket (and the
agents' port); the plugin gets no agent certificate, and its account still reads none of
the agents' Secrets. ``agent.enabled: false`` wires none of it (such groups are refused).
Every rendered argument is one the CLI parses."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from statehold.cli.main import build_app
from tests.unit.kube.validation import render, validate_object

NS = "statehold-system"


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def container(docs: list[dict[str, Any]], workload: str, name: str) -> dict[str, Any]:
    ds = one(docs, "DaemonSet", workload)
    found: list[dict[str, Any]] = [c for c in ds["spec"]["template"]["spec"]["containers"]
                                   if c["name"] == name]
    assert len(found) == 1
    return found[0]


def host_dir_of(docs: list[dict[str, Any]], workload: str, name: str, path: str) -> str:
    """The host directory mounted at the directory holding ``path`` in that container."""
    ds = one(docs, "DaemonSet", workload)
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    parent = path.rsplit("/", 1)[0]
    (mount,) = [m for m in container(docs, workload, name)["volumeMounts"]
                if m["mountPath"] == parent]
    volume = volumes[mount["name"]]["hostPath"]
    assert volume["type"] == "DirectoryOrCreate"
    return str(volume["path"])


def flag(args: list[str], name: str) -> str | None:
    found = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(found) <= 1
    return found[0] if found else None


def parses(args: list[str]) -> None:
    """The CLI accepts ``args``: its parser runs (unknown or malformed options fail), the
    command does not."""
    cmd: Any = typer.main.get_command(build_app())
    rest, name = list(args), "statehold"
    while hasattr(cmd, "resolve_command"):  # a group (typer's own click)
        name, cmd, rest = cmd.resolve_command(cmd.context_class(cmd), rest)
        assert cmd is not None
    assert cmd.make_context(name, rest).params


@pytest.mark.parametrize("values", [{}, {"agent": {"port": 9443, "localSocketDir": "/var/run/sh-agent"}}])
def test_the_plugin_reaches_its_nodes_agent_through_a_shared_host_socket(values: dict[str, Any]) -> None:
    docs = render.render_chart(values, name="sh", namespace=NS)
    for doc in docs:
        validate_object(doc)
    agent = container(docs, "statehold-agent", "agent")
    plugin = container(docs, "statehold-node", "statehold-plugin")
    served = flag(agent["args"], "--local-socket")
    asked = flag(plugin["args"], "--agent-socket")
    directory = values.get("agent", {}).get("localSocketDir", "/run/statehold-agent")
    assert served == asked == f"{directory}/agent.sock"
    assert flag(plugin["args"], "--agent-port") == str(values.get("agent", {}).get("port", 7443))
    assert "--cluster" in plugin["args"]  # the pools' nodes and the Nodes' addresses
    # one host directory, mounted by both pods (root in privileged containers only)
    assert host_dir_of(docs, "statehold-agent", "agent", served) == directory
    assert host_dir_of(docs, "statehold-node", "statehold-plugin", asked) == directory
    assert agent["securityContext"]["privileged"] is True
    assert plugin["securityContext"]["privileged"] is True
    # the plugin holds no agent certificate: no certificate flags, no Secret volume
    assert not [a for a in plugin["args"] if "cert" in a]
    node_ds = one(docs, "DaemonSet", "statehold-node")["spec"]["template"]["spec"]
    assert not [v for v in node_ds["volumes"] if "secret" in v]
    parses(agent["args"])
    parses(plugin["args"])


def test_without_agents_the_plugin_is_given_no_socket() -> None:
    docs = render.render_chart({"agent": {"enabled": False}}, name="sh", namespace=NS)
    plugin = container(docs, "statehold-node", "statehold-plugin")
    assert flag(plugin["args"], "--agent-socket") is None
    assert flag(plugin["args"], "--agent-port") is None
    node_ds = one(docs, "DaemonSet", "statehold-node")["spec"]["template"]["spec"]
    assert not [v for v in node_ds["volumes"] if v["name"] == "agent-socket"]
    parses(plugin["args"])


def test_a_relative_socket_directory_is_refused_by_the_schema() -> None:
    with pytest.raises(Exception, match=r"localSocketDir|does not match"):
        render.render_chart({"agent": {"localSocketDir": "run/x"}}, name="sh", namespace=NS)
