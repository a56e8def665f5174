"""The capabilities the driver reports exist in the CSI version it declares (v1.10.0).

Our ``csi.proto`` carries enum values from later spec versions too (``GET_SNAPSHOT = 15``
came with the GetSnapshot RPC, spec PR #586, 2025); a v1.10 CO does not know them, so reporting
one is a spec violation, whatever the proto allows.
"""

from __future__ import annotations

from typing import Any

from statehold.csi.controller import ControllerServicer
from statehold.csi.gen import csi_pb2 as pb
from statehold.csi.identity import IdentityServicer
from statehold.csi.status import VolumeLocks

# ControllerServiceCapability.RPC.Type in the CSI v1.10.0 spec: 0..14.
V1_10_CONTROLLER_RPCS = {
    "UNKNOWN", "CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "LIST_VOLUMES", "GET_CAPACITY",
    "CREATE_DELETE_SNAPSHOT", "LIST_SNAPSHOTS", "CLONE_VOLUME", "PUBLISH_READONLY", "EXPAND_VOLUME",
    "LIST_VOLUMES_PUBLISHED_NODES", "VOLUME_CONDITION", "GET_VOLUME", "SINGLE_NODE_MULTI_WRITER",
    "MODIFY_VOLUME",
}
# PluginCapability.Service.Type in v1.10.0.
V1_10_PLUGIN_SERVICES = {
    "UNKNOWN", "CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS", "GROUP_CONTROLLER_SERVICE",
    "SNAPSHOT_METADATA_SERVICE",
}


class Context:
    """Just enough of grpc.ServicerContext for a call that succeeds."""

    def abort(self, code: Any, message: str) -> None:  # pragma: no cover - a failing call
        raise AssertionError(f"{code}: {message}")


def test_controller_reports_only_capabilities_csi_1_10_defines() -> None:
    servicer = ControllerServicer(router=None, locks=VolumeLocks())  # type: ignore[arg-type]
    resp = servicer.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest(), Context())
    names = [pb.ControllerServiceCapability.RPC.Type.Name(c.rpc.type) for c in resp.capabilities]
    assert names and set(names) <= V1_10_CONTROLLER_RPCS - {"UNKNOWN"}, names
    assert "GET_SNAPSHOT" not in names
    assert len(names) == len(set(names))


def test_plugin_reports_only_services_csi_1_10_defines() -> None:
    servicer = IdentityServicer(ready=lambda: True, health=lambda: "")
    resp = servicer.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), Context())
    services = [pb.PluginCapability.Service.Type.Name(c.service.type)
                for c in resp.capabilities if c.HasField("service")]
    assert services and set(services) <= V1_10_PLUGIN_SERVICES - {"UNKNOWN"}, services
