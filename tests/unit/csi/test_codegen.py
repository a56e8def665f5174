"""The committed generated code matches csi.proto (what `make test` checks)."""

from __future__ import annotations

from pathlib import Path

from statehold.csi import codegen
from statehold.csi.gen import csi_pb2, csi_pb2_grpc


def test_committed_generated_code_is_current() -> None:
    assert codegen.main(["--check"]) == 0


def test_check_detects_stale_code(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    codegen.generate(fresh)
    stale = tmp_path / "stale"
    codegen.generate(stale)
    (stale / "csi_pb2.py").write_text("# edited by hand\n")
    assert codegen.differences(stale, fresh) == ["csi_pb2.py"]


def test_grpc_module_imports_messages_as_a_package_module() -> None:
    assert csi_pb2_grpc.csi__pb2 is csi_pb2


def test_wire_facts_match_the_spec() -> None:
    """Spot checks of numbers a CO relies on (package, enum values, field numbers)."""
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    mode = csi_pb2.VolumeCapability.AccessMode
    assert mode.SINGLE_NODE_SINGLE_WRITER == 6 and mode.SINGLE_NODE_MULTI_WRITER == 7
    fields = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name
    assert fields["accessibility_requirements"].number == 7
    assert csi_pb2.NodeGetVolumeStatsRequest.DESCRIPTOR.fields_by_name["staging_target_path"].number == 3
    assert csi_pb2.ControllerServiceCapability.RPC.GET_SNAPSHOT == 15
    assert csi_pb2.Snapshot.DESCRIPTOR.fields_by_name["group_snapshot_id"].number == 6
    services = {s.name for s in csi_pb2.DESCRIPTOR.services_by_name.values()}
    assert services == {"Identity", "Controller", "GroupController", "Node"}
