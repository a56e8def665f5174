"""CSI Node service: stage/publish through the volume's backend, stats, expand, node info."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import grpc

from statehold.csi import requests
from statehold.csi.backend import TOPOLOGY_KEY, Capability, PublishRequest, StageRequest, VolumeBackend
from statehold.csi.gen import csi_pb2, csi_pb2_grpc
from statehold.csi.replicated import Replicas
from statehold.csi.router import Router
from statehold.csi.status import VolumeLocks, rpc
from statehold.errors import FailedPrecondition, InvalidArgument

_RPC = csi_pb2.NodeServiceCapability.RPC
CAPABILITIES = (
    _RPC.STAGE_UNSTAGE_VOLUME,
    _RPC.GET_VOLUME_STATS,
    _RPC.EXPAND_VOLUME,
    _RPC.VOLUME_CONDITION,
    _RPC.SINGLE_NODE_MULTI_WRITER,
)

DEFAULT_MAX_VOLUMES = 256
"""Loop devices are cheap, but each staged volume holds one; the CO spreads beyond this."""


def _capability(request: csi_pb2.NodeStageVolumeRequest | csi_pb2.NodePublishVolumeRequest) -> Capability:
    if not request.HasField("volume_capability"):
        raise InvalidArgument("volume_capability is required")
    return requests.capability(request.volume_capability)


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(
        self,
        router: Router,
        locks: VolumeLocks,
        *,
        node_id: str,
        allowed_roots: Sequence[Path],
        max_volumes: int = DEFAULT_MAX_VOLUMES,
        replicas: Replicas | None = None,
    ) -> None:
        self.router = router
        self.replicas = replicas
        self.locks = locks
        self.node_id = node_id
        self.roots = tuple(allowed_roots)
        # each root also by its real path, resolved once: a root may be a symlink (kubelet's
        # directory moved to another disk), and protected paths compare as real paths
        self.real_roots = tuple((r, Path(os.path.realpath(r))) for r in self.roots)
        self.max_volumes = max_volumes

    def _copy(self, volume_id: str, backend: VolumeBackend) -> str:
        """The id of this node's copy of a local volume (a replicated volume's copy may sit
        in a pool named otherwise than the handle's: ``csi.replicated``)."""
        if self.replicas is not None and backend is self.router.local:
            return self.replicas.local_id(volume_id)
        return volume_id

    def _path(self, value: str, field: str) -> Path:
        """A staging or target path: inside an allowed root, outside what the driver owns."""
        protected = [Path(os.path.realpath(p)) for b in self.router.backends() for p in b.node_protected()]
        return requests.path(value, field, self.real_roots, protected)

    @rpc(lock=lambda r: r.volume_id)
    def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeStageVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        staging = self._path(request.staging_target_path, "staging_target_path")
        cap = _capability(request)
        backend = self.router.for_id(volume_id)
        why = requests.unsupported(backend, (cap,))
        if why:
            raise InvalidArgument(why)
        copy_id = self._copy(volume_id, backend)
        if self.replicas is not None and backend is self.router.local:
            # a replicated volume stages only where the cluster's record makes it writable
            self.replicas.check_stage(copy_id, volume_id, dict(request.volume_context))
        backend.node_stage(
            StageRequest(
                volume_id=copy_id,
                staging_path=staging,
                capability=cap,
                context=dict(request.volume_context),
                publish_context=dict(request.publish_context),
            )
        )
        return csi_pb2.NodeStageVolumeResponse()

    @rpc(lock=lambda r: r.volume_id)
    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        staging = self._path(request.staging_target_path, "staging_target_path")
        backend = self.router.for_id(volume_id)
        backend.node_unstage(self._copy(volume_id, backend), staging)
        return csi_pb2.NodeUnstageVolumeResponse()

    @rpc(lock=lambda r: r.volume_id)
    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        target = self._path(request.target_path, "target_path")
        cap = _capability(request)
        backend = self.router.for_id(volume_id)
        why = requests.unsupported(backend, (cap,))
        if why:
            raise InvalidArgument(why)
        staging: Path | None = None
        if request.staging_target_path:
            staging = self._path(request.staging_target_path, "staging_target_path")
        elif backend.needs_staging:
            raise FailedPrecondition("staging_target_path is required: the volume must be staged first")
        backend.node_publish(
            PublishRequest(
                volume_id=self._copy(volume_id, backend),
                target_path=target,
                staging_path=staging,
                capability=cap,
                readonly=request.readonly,
                context=dict(request.volume_context),
                publish_context=dict(request.publish_context),
            )
        )
        return csi_pb2.NodePublishVolumeResponse()

    @rpc(lock=lambda r: r.volume_id)
    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        target = self._path(request.target_path, "target_path")
        backend = self.router.for_id(volume_id)
        backend.node_unpublish(self._copy(volume_id, backend), target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    @rpc()
    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        # only read here, so not confined to the allowed roots: a path where the volume
        # is not mounted is simply "volume not found there" (the spec's NOT_FOUND row)
        volume_path = Path(requests.require(request.volume_path, "volume_path"))
        backend = self.router.for_id(volume_id)
        stats = backend.node_stats(self._copy(volume_id, backend), volume_path)
        unit = csi_pb2.VolumeUsage.Unit
        usage = [
            csi_pb2.VolumeUsage(
                unit=unit.BYTES,
                total=stats.bytes_total,
                used=stats.bytes_used,
                available=stats.bytes_available,
            )
        ]
        if stats.inodes_total is not None:
            usage.append(
                csi_pb2.VolumeUsage(
                    unit=unit.INODES,
                    total=stats.inodes_total,
                    used=stats.inodes_used or 0,
                    available=stats.inodes_available or 0,
                )
            )
        condition = csi_pb2.VolumeCondition(abnormal=stats.abnormal, message=stats.message or "healthy")
        return csi_pb2.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    @rpc(lock=lambda r: r.volume_id)
    def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        volume_path = Path(requests.require(request.volume_path, "volume_path"))  # only checked
        required, _limit = requests.capacity_range(
            request.HasField("capacity_range"),
            request.capacity_range.required_bytes,
            request.capacity_range.limit_bytes,
        )
        if request.HasField("volume_capability"):
            requests.capability(request.volume_capability)
        backend = self.router.for_id(volume_id)
        size = backend.node_expand(self._copy(volume_id, backend), volume_path, required)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    @rpc()
    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        caps = [csi_pb2.NodeServiceCapability(rpc=_RPC(type=t)) for t in CAPABILITIES]
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=caps)

    @rpc()
    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.node_id,
            max_volumes_per_node=self.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: self.node_id}),
        )
