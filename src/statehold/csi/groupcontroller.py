"""CSI GroupController service: group snapshots, one instant across volumes of this node.

Translate, call :class:`~statehold.csi.local_groups.LocalGroups`, encode; errors become gRPC
codes in ``status.rpc`` like every servicer's. The codes the spec lists, beyond the general
ones:

* CreateVolumeGroupSnapshot: ALREADY_EXISTS for the name with other volumes (or a member
  snapshot name already taken); FAILED_PRECONDITION for volumes that cannot be snapshotted
  together (on several nodes, or shared volumes); RESOURCE_EXHAUSTED for no room; and,
  ours, UNAVAILABLE when the freeze outlasted its ``freezeTimeout`` (nothing kept: retry);
* DeleteVolumeGroupSnapshot: OK when the group is gone already; INVALID_ARGUMENT when
  ``snapshot_ids`` does not list the group's snapshots; FAILED_PRECONDITION while a member
  snapshot is in use;
* GetVolumeGroupSnapshot: NOT_FOUND; INVALID_ARGUMENT when ``snapshot_ids`` does not match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import grpc

from statehold.csi import convert, requests
from statehold.csi.gen import csi_pb2, csi_pb2_grpc
from statehold.csi.local_groups import GroupInfo, LocalGroups
from statehold.csi.status import VolumeLocks, rpc
from statehold.errors import FailedPrecondition, InvalidArgument, NotFound

_RPC = csi_pb2.GroupControllerServiceCapability.RPC
CAPABILITIES = (_RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,)


def encode(info: GroupInfo) -> csi_pb2.VolumeGroupSnapshot:
    snapshots = []
    for snap in info.snapshots:
        msg = convert.snapshot(snap)
        msg.group_snapshot_id = info.group_snapshot_id
        snapshots.append(msg)
    return csi_pb2.VolumeGroupSnapshot(
        group_snapshot_id=info.group_snapshot_id, snapshots=snapshots,
        creation_time=convert.timestamp(info.created_at), ready_to_use=info.ready)


def check_listed(info: GroupInfo, snapshot_ids: Sequence[str]) -> None:
    """The spec's "snapshot list mismatch": ``snapshot_ids``, when given, must name exactly
    the group's snapshots as created (order aside; a member deleted since still counts)."""
    if snapshot_ids and sorted(snapshot_ids) != sorted(info.member_ids):
        raise InvalidArgument(f"snapshot_ids do not match the snapshots of group snapshot "
                              f"{info.group_snapshot_id!r}")


class GroupControllerServicer(csi_pb2_grpc.GroupControllerServicer):
    def __init__(self, groups: LocalGroups | None, locks: VolumeLocks) -> None:
        self.groups = groups
        self.locks = locks

    def _local(self) -> LocalGroups:
        if self.groups is None:
            raise FailedPrecondition("group snapshots need this driver's local volumes")
        return self.groups

    @rpc()
    def GroupControllerGetCapabilities(
        self, request: csi_pb2.GroupControllerGetCapabilitiesRequest,
        context: grpc.ServicerContext,
    ) -> csi_pb2.GroupControllerGetCapabilitiesResponse:
        caps = [csi_pb2.GroupControllerServiceCapability(rpc=_RPC(type=t)) for t in CAPABILITIES]
        return csi_pb2.GroupControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc(lock=lambda r: f"group/{r.name}" if r.name else "")
    def CreateVolumeGroupSnapshot(
        self, request: csi_pb2.CreateVolumeGroupSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeGroupSnapshotResponse:
        name = requests.require(request.name, "name")
        volume_ids = list(request.source_volume_ids)
        if not volume_ids:
            raise InvalidArgument("source_volume_ids is required")
        for volume_id in volume_ids:
            requests.require(volume_id, "source_volume_ids entry")
        if len(set(volume_ids)) != len(volume_ids):
            raise InvalidArgument("source_volume_ids names a volume twice")
        info = self._local().create(name, volume_ids, dict(request.parameters))
        return csi_pb2.CreateVolumeGroupSnapshotResponse(group_snapshot=encode(info))

    @rpc(lock=lambda r: f"group-id/{r.group_snapshot_id}" if r.group_snapshot_id else "")
    def DeleteVolumeGroupSnapshot(
        self, request: csi_pb2.DeleteVolumeGroupSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeGroupSnapshotResponse:
        group_id = requests.require(request.group_snapshot_id, "group_snapshot_id")
        groups = self._local()
        with contextlib.suppress(NotFound):  # the spec: deleting nothing succeeds
            check_listed(groups.get(group_id), request.snapshot_ids)
            groups.delete(group_id)
        return csi_pb2.DeleteVolumeGroupSnapshotResponse()

    @rpc()
    def GetVolumeGroupSnapshot(
        self, request: csi_pb2.GetVolumeGroupSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetVolumeGroupSnapshotResponse:
        group_id = requests.require(request.group_snapshot_id, "group_snapshot_id")
        info = self._local().get(group_id)
        check_listed(info, request.snapshot_ids)
        return csi_pb2.GetVolumeGroupSnapshotResponse(group_snapshot=encode(info))
