"""Backend dataclasses -> CSI protobuf messages (the response side of the translation)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from statehold.csi.backend import Capability, ContentSource, SnapshotInfo, VolumeInfo
from statehold.csi.gen import csi_pb2


def content_source(src: ContentSource | None) -> csi_pb2.VolumeContentSource | None:
    if src is None:
        return None
    if src.kind == "snapshot":
        return csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=src.id)
        )
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=src.id))


def volume(info: VolumeInfo) -> csi_pb2.Volume:
    return csi_pb2.Volume(
        capacity_bytes=info.capacity_bytes,
        volume_id=info.volume_id,
        volume_context=dict(info.context),
        content_source=content_source(info.source),
        accessible_topology=[csi_pb2.Topology(segments=dict(s)) for s in info.topology],
    )


def condition(info: VolumeInfo) -> csi_pb2.VolumeCondition:
    return csi_pb2.VolumeCondition(abnormal=info.abnormal, message=info.message or "healthy")


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1_000_000_000))
    return ts


def snapshot(info: SnapshotInfo) -> csi_pb2.Snapshot:
    return csi_pb2.Snapshot(
        size_bytes=info.size_bytes,
        snapshot_id=info.snapshot_id,
        source_volume_id=info.source_volume_id,
        creation_time=timestamp(info.created_at),
        ready_to_use=info.ready,
    )


def capability(cap: Capability) -> csi_pb2.VolumeCapability:
    """Re-encode a decoded capability (ValidateVolumeCapabilities echoes what it confirms)."""
    mode = csi_pb2.VolumeCapability.AccessMode(mode=cap.mode.value)  # enum by name
    if cap.block:
        return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=mode)
    mount = csi_pb2.VolumeCapability.MountVolume(
        fs_type=cap.fs_type, mount_flags=list(cap.mount_flags), volume_mount_group=cap.volume_mount_group
    )
    return csi_pb2.VolumeCapability(mount=mount, access_mode=mode)
