"""CSI Controller service: translate, route to a backend, encode. No storage logic here."""

from __future__ import annotations

import contextlib

import grpc

from statehold.csi import convert, pagination, requests
from statehold.csi.backend import Capability, SnapshotInfo, VolumeInfo, VolumeRequest
from statehold.csi.gen import csi_pb2, csi_pb2_grpc
from statehold.csi.replicated import Replicas
from statehold.csi.router import Router
from statehold.csi.status import VolumeLocks, rpc
from statehold.errors import InvalidArgument, NotFound

_RPC = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = (
    _RPC.CREATE_DELETE_VOLUME,
    _RPC.LIST_VOLUMES,
    _RPC.GET_CAPACITY,
    _RPC.CREATE_DELETE_SNAPSHOT,
    _RPC.LIST_SNAPSHOTS,
    _RPC.CLONE_VOLUME,
    _RPC.EXPAND_VOLUME,
    _RPC.VOLUME_CONDITION,
    _RPC.GET_VOLUME,
    _RPC.SINGLE_NODE_MULTI_WRITER,
)
"""No PUBLISH_UNPUBLISH_VOLUME: a local volume needs no attach step on a controller; the
node attaches its loop device in NodeStageVolume. Only what CSI v1.10.0 (the version we
declare) defines: not GET_SNAPSHOT, which came later though our csi.proto carries it (the
GetSnapshot RPC still answers, but a CO must not be told to rely on it)."""


def _create_key(r: csi_pb2.CreateVolumeRequest) -> str:
    return f"create/{r.name}" if r.name else ""


def _snapshot_key(r: csi_pb2.CreateSnapshotRequest) -> str:
    return f"snapshot/{r.name}" if r.name else ""


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    """``replicas``: local volumes are deleted through it (a replicated volume only on its
    primary's node, copy state and point snapshots included; csi/replicated.py)."""

    def __init__(self, router: Router, locks: VolumeLocks, replicas: Replicas | None = None) -> None:
        self.router = router
        self.locks = locks
        self.replicas = replicas

    @rpc(lock=_create_key)
    def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeResponse:
        name = requests.require(request.name, "name")
        caps = requests.capabilities(request.volume_capabilities)
        params = dict(request.parameters)
        backend = self.router.for_parameters(params)
        why = requests.unsupported(backend, caps)
        if why:
            raise InvalidArgument(why)
        required, limit = requests.capacity_range(
            request.HasField("capacity_range"),
            request.capacity_range.required_bytes,
            request.capacity_range.limit_bytes,
        )
        source = requests.content_source(
            request.volume_content_source, request.HasField("volume_content_source")
        )
        if source is not None and self.router.for_id(source.id) is not backend:
            raise InvalidArgument(f"source {source.id!r} belongs to another kind of volume")
        req = VolumeRequest(
            name=name,
            required_bytes=required,
            limit_bytes=limit,
            capabilities=caps,
            parameters=params,
            source=source,
            requisite=requests.segments(request.accessibility_requirements.requisite),
            preferred=requests.segments(request.accessibility_requirements.preferred),
        )
        info = backend.create_volume(req)
        return csi_pb2.CreateVolumeResponse(volume=convert.volume(info))

    @rpc(lock=lambda r: r.volume_id)
    def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        backend = self.router.for_id(volume_id)
        with contextlib.suppress(NotFound):  # the spec: deleting nothing succeeds
            if self.replicas is not None and backend is self.router.local:
                self.replicas.delete_volume(volume_id)
            else:
                backend.delete_volume(volume_id)
        return csi_pb2.DeleteVolumeResponse()

    @rpc()
    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        caps = requests.capabilities(request.volume_capabilities)
        backend = self.router.for_id(volume_id)
        info = backend.get_volume(volume_id)
        why = requests.unsupported(backend, caps) or _mismatch(info, caps)
        if not why and request.volume_context and dict(request.volume_context) != dict(info.context):
            why = "volume_context does not match the volume's"
        if why:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=why)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=dict(request.volume_context),
            volume_capabilities=[convert.capability(c) for c in caps],
            parameters=dict(request.parameters),
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc()
    def ListVolumes(
        self, request: csi_pb2.ListVolumesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListVolumesResponse:
        if request.starting_token:
            pagination.decode(request.starting_token)  # a bad token is ABORTED even if empty
        infos: list[VolumeInfo] = [v for b in self.router.backends() for v in b.list_volumes()]
        chosen, token = pagination.page(
            infos, lambda v: v.volume_id, request.max_entries, request.starting_token
        )
        entries = [
            csi_pb2.ListVolumesResponse.Entry(
                volume=convert.volume(v),
                status=csi_pb2.ListVolumesResponse.VolumeStatus(volume_condition=convert.condition(v)),
            )
            for v in chosen
        ]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=token)

    @rpc()
    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        info = self.router.for_id(volume_id).get_volume(volume_id)
        status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus(volume_condition=convert.condition(info))
        return csi_pb2.ControllerGetVolumeResponse(volume=convert.volume(info), status=status)

    @rpc()
    def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetCapacityResponse:
        params = dict(request.parameters)
        backend = self.router.for_parameters(params)
        caps = tuple(requests.capability(c) for c in request.volume_capabilities)
        if caps and requests.unsupported(backend, caps):
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        segment = None
        if request.HasField("accessible_topology"):
            segment = dict(request.accessible_topology.segments)
        cap = backend.capacity(params, segment)
        resp = csi_pb2.GetCapacityResponse(available_capacity=cap.available)
        if cap.maximum_volume_size is not None:
            resp.maximum_volume_size.value = cap.maximum_volume_size
        if cap.minimum_volume_size is not None:
            resp.minimum_volume_size.value = cap.minimum_volume_size
        return resp

    @rpc()
    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        caps = [csi_pb2.ControllerServiceCapability(rpc=_RPC(type=t)) for t in CAPABILITIES]
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc(lock=_snapshot_key)
    def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateSnapshotResponse:
        source = requests.require(request.source_volume_id, "source_volume_id")
        name = requests.require(request.name, "name")
        info = self.router.for_id(source).create_snapshot(source, name, dict(request.parameters))
        return csi_pb2.CreateSnapshotResponse(snapshot=convert.snapshot(info))

    @rpc(lock=lambda r: f"snapshot-id/{r.snapshot_id}" if r.snapshot_id else "")
    def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteSnapshotResponse:
        snapshot_id = requests.require(request.snapshot_id, "snapshot_id")
        with contextlib.suppress(NotFound):  # the spec: deleting nothing succeeds
            self.router.for_id(snapshot_id).delete_snapshot(snapshot_id)
        return csi_pb2.DeleteSnapshotResponse()

    @rpc()
    def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListSnapshotsResponse:
        if request.starting_token:
            pagination.decode(request.starting_token)
        infos: list[SnapshotInfo]
        if request.snapshot_id:
            try:
                infos = [self.router.for_id(request.snapshot_id).get_snapshot(request.snapshot_id)]
            except (NotFound, InvalidArgument):
                infos = []
            if request.source_volume_id:
                infos = [s for s in infos if s.source_volume_id == request.source_volume_id]
        elif request.source_volume_id:
            try:
                backend = self.router.for_id(request.source_volume_id)
                infos = list(backend.list_snapshots(request.source_volume_id))
            except (NotFound, InvalidArgument):
                infos = []
        else:
            infos = [s for b in self.router.backends() for s in b.list_snapshots()]
        chosen, token = pagination.page(
            infos, lambda s: s.snapshot_id, request.max_entries, request.starting_token
        )
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=convert.snapshot(s)) for s in chosen]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=token)

    @rpc()
    def GetSnapshot(
        self, request: csi_pb2.GetSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetSnapshotResponse:
        snapshot_id = requests.require(request.snapshot_id, "snapshot_id")
        info = self.router.for_id(snapshot_id).get_snapshot(snapshot_id)
        return csi_pb2.GetSnapshotResponse(snapshot=convert.snapshot(info))

    @rpc(lock=lambda r: r.volume_id)
    def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        volume_id = requests.require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise InvalidArgument("capacity_range is required")
        required, limit = requests.capacity_range(
            True, request.capacity_range.required_bytes, request.capacity_range.limit_bytes
        )
        if request.HasField("volume_capability"):
            requests.capability(request.volume_capability)
        result = self.router.for_id(volume_id).expand_volume(volume_id, required, limit)
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=result.capacity_bytes, node_expansion_required=result.node_expansion_required
        )


def _mismatch(info: VolumeInfo, caps: tuple[Capability, ...]) -> str:
    """Why ``caps`` do not fit an existing volume (its mode and filesystem are fixed)."""
    for cap in caps:
        if cap.block != info.block:
            return f"volume is {'block' if info.block else 'filesystem'} mode"
        if not cap.block and cap.fs_type and info.fs_type and cap.fs_type != info.fs_type:
            return f"volume is formatted {info.fs_type}, not {cap.fs_type}"
    return ""
