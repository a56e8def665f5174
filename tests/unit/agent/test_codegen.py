"""The agent's generated code is current and importable as a package module."""

from __future__ import annotations

from pathlib import Path

from statehold import protogen
from statehold.agent.gen import agent_pb2, agent_pb2_grpc


def test_committed_generated_code_of_every_proto_is_current() -> None:
    assert protogen.check() == []


def test_check_names_a_stale_agent_file(tmp_path: Path) -> None:
    fresh, stale = tmp_path / "fresh", tmp_path / "stale"
    protogen.generate(protogen.AGENT, fresh)
    protogen.generate(protogen.AGENT, stale)
    (stale / "agent_pb2_grpc.py").write_text("# edited by hand\n")
    assert protogen.differences(protogen.AGENT, stale, fresh) == ["agent_pb2_grpc.py"]


def test_grpc_module_imports_messages_as_a_package_module() -> None:
    assert agent_pb2_grpc.agent__pb2 is agent_pb2
    assert agent_pb2.DESCRIPTOR.package == "statehold.agent.v1"
    assert set(agent_pb2.DESCRIPTOR.services_by_name["Agent"].methods_by_name) == {
        "Ping", "Replicate", "CopyStatus", "CreateCopy", "Sync", "Promote", "Demote", "SetReplicas",
        "Release", "ExportPool", "PrepareGroupSnapshot", "CommitGroupSnapshot",
        "AbortGroupSnapshot", "GroupSnapshotPart"}
