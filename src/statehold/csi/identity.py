"""CSI Identity service: who the plugin is, what it can do, whether it is ready."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import wrappers_pb2

from statehold import __version__
from statehold.csi.gen import csi_pb2, csi_pb2_grpc
from statehold.csi.status import VolumeLocks, rpc
from statehold.errors import FailedPrecondition

DRIVER_NAME = "csi.statehold.io"

NODE_TOOLS = (
    "losetup", "blockdev", "mount", "umount", "fsfreeze",
    "mkfs.xfs", "xfs_growfs", "mkfs.ext4", "resize2fs", "mkfs.btrfs", "btrfs",
)  # fmt: skip
"""The Linux tools the engine and the node service run; Probe fails without them."""


def missing_tools(tools: Sequence[str] = NODE_TOOLS) -> str:
    """"" when every tool is on PATH, else which are not (the spec's "missing required
    dependency", answered FAILED_PRECONDITION by Probe)."""
    missing = [t for t in tools if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)}" if missing else ""

_Service = csi_pb2.PluginCapability.Service
_Expansion = csi_pb2.PluginCapability.VolumeExpansion


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(
        self, *, ready: Callable[[], bool] = lambda: True, health: Callable[[], str] = lambda: ""
    ) -> None:
        self.locks = VolumeLocks()
        self._ready = ready
        self._health = health

    @rpc()
    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    @rpc()
    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # the spec: the capabilities of the plugin "as a whole", the same from every instance
        # whichever services it serves (a node-mode instance still belongs to a plugin that
        # has a controller)
        caps = [
            csi_pb2.PluginCapability(service=_Service(type=_Service.CONTROLLER_SERVICE)),
            csi_pb2.PluginCapability(service=_Service(type=_Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi_pb2.PluginCapability(service=_Service(type=_Service.GROUP_CONTROLLER_SERVICE)),
            csi_pb2.PluginCapability(volume_expansion=_Expansion(type=_Expansion.ONLINE)),
        ]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc()
    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        problem = self._health()
        if problem:
            raise FailedPrecondition(f"plugin not healthy: {problem}")
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=self._ready()))
