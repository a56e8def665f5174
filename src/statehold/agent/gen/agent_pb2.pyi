from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeMembers(_message.Message):
    __slots__ = ("node", "address", "members")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ...) -> None: ...

class CoordinateGroupRequest(_message.Message):
    __slots__ = ("name", "parts", "lease_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parts: _containers.RepeatedCompositeFieldContainer[NodeMembers]
    lease_seconds: float
    def __init__(self, name: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[NodeMembers, _Mapping]]] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class CoordinatedGroup(_message.Message):
    __slots__ = ("name", "attempt", "created_at", "existed", "parts", "windows")
    class WindowsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    attempt: str
    created_at: float
    existed: bool
    parts: _containers.RepeatedCompositeFieldContainer[NodeMembers]
    windows: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., attempt: _Optional[str] = ..., created_at: _Optional[float] = ..., existed: _Optional[bool] = ..., parts: _Optional[_Iterable[_Union[NodeMembers, _Mapping]]] = ..., windows: _Optional[_Mapping[str, float]] = ...) -> None: ...

class NodeAgent(_message.Message):
    __slots__ = ("node", "address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class LocalGroupRequest(_message.Message):
    __slots__ = ("name", "nodes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeAgent]
    def __init__(self, name: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeAgent, _Mapping]]] = ...) -> None: ...

class NodeGroupPart(_message.Message):
    __slots__ = ("node", "part")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    node: str
    part: GroupPartReply
    def __init__(self, node: _Optional[str] = ..., part: _Optional[_Union[GroupPartReply, _Mapping]] = ...) -> None: ...

class LocalGroupParts(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[NodeGroupPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[NodeGroupPart, _Mapping]]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("node", "version", "caller", "wire_versions")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    WIRE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: str
    caller: str
    wire_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node: _Optional[str] = ..., version: _Optional[str] = ..., caller: _Optional[str] = ..., wire_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("volume", "data")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    volume: str
    data: bytes
    def __init__(self, volume: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("volume", "point", "epoch", "bytes")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    volume: str
    point: str
    epoch: int
    bytes: int
    def __init__(self, volume: _Optional[str] = ..., point: _Optional[str] = ..., epoch: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class CopyStatusRequest(_message.Message):
    __slots__ = ("volume", "any_pool")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    ANY_POOL_FIELD_NUMBER: _ClassVar[int]
    volume: str
    any_pool: bool
    def __init__(self, volume: _Optional[str] = ..., any_pool: _Optional[bool] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node", "address", "pool", "point", "acknowledged_at", "lag_seconds", "sent_bytes", "last_error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    pool: str
    point: str
    acknowledged_at: float
    lag_seconds: float
    sent_bytes: int
    last_error: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., pool: _Optional[str] = ..., point: _Optional[str] = ..., acknowledged_at: _Optional[float] = ..., lag_seconds: _Optional[float] = ..., sent_bytes: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class CopyStatusReply(_message.Message):
    __slots__ = ("volume", "role", "epoch", "point", "resume_offset", "state", "replicas", "wire_versions", "size", "mode", "fs", "point_time")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WIRE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FS_FIELD_NUMBER: _ClassVar[int]
    POINT_TIME_FIELD_NUMBER: _ClassVar[int]
    volume: str
    role: str
    epoch: int
    point: str
    resume_offset: int
    state: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    wire_versions: _containers.RepeatedScalarFieldContainer[int]
    size: int
    mode: str
    fs: str
    point_time: float
    def __init__(self, volume: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., point: _Optional[str] = ..., resume_offset: _Optional[int] = ..., state: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., wire_versions: _Optional[_Iterable[int]] = ..., size: _Optional[int] = ..., mode: _Optional[str] = ..., fs: _Optional[str] = ..., point_time: _Optional[float] = ...) -> None: ...

class CreateCopyRequest(_message.Message):
    __slots__ = ("volume", "size", "mode", "fs")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FS_FIELD_NUMBER: _ClassVar[int]
    volume: str
    size: int
    mode: str
    fs: str
    def __init__(self, volume: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[str] = ..., fs: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("volume", "to")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    volume: str
    to: str
    def __init__(self, volume: _Optional[str] = ..., to: _Optional[str] = ...) -> None: ...

class SyncReply(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class RoleRequest(_message.Message):
    __slots__ = ("volume", "epoch")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    volume: str
    epoch: int
    def __init__(self, volume: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class RoleReply(_message.Message):
    __slots__ = ("volume", "role", "epoch")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    volume: str
    role: str
    epoch: int
    def __init__(self, volume: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node", "address", "pool")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    pool: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class SetReplicasRequest(_message.Message):
    __slots__ = ("volume", "replicas", "rpo_seconds")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RPO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    volume: str
    replicas: _containers.RepeatedCompositeFieldContainer[Peer]
    rpo_seconds: int
    def __init__(self, volume: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., rpo_seconds: _Optional[int] = ...) -> None: ...

class SetReplicasReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("volume", "whole")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    volume: str
    whole: bool
    def __init__(self, volume: _Optional[str] = ..., whole: _Optional[bool] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportPoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ExportPoolReply(_message.Message):
    __slots__ = ("pool", "exported")
    POOL_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_FIELD_NUMBER: _ClassVar[int]
    pool: str
    exported: bool
    def __init__(self, pool: _Optional[str] = ..., exported: _Optional[bool] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("pool", "volume", "snapshot")
    POOL_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    pool: str
    volume: str
    snapshot: str
    def __init__(self, pool: _Optional[str] = ..., volume: _Optional[str] = ..., snapshot: _Optional[str] = ...) -> None: ...

class PrepareGroupRequest(_message.Message):
    __slots__ = ("id", "name", "members", "nodes", "lease_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    lease_seconds: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ..., nodes: _Optional[_Iterable[str]] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class GroupDecision(_message.Message):
    __slots__ = ("id", "name", "instant")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    instant: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., instant: _Optional[float] = ...) -> None: ...

class GroupPhaseReply(_message.Message):
    __slots__ = ("id", "state", "reason", "frozen", "lease_left", "window_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_LEFT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    reason: str
    frozen: int
    lease_left: float
    window_seconds: float
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., frozen: _Optional[int] = ..., lease_left: _Optional[float] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class GroupPartRequest(_message.Message):
    __slots__ = ("name", "delete")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    name: str
    delete: bool
    def __init__(self, name: _Optional[str] = ..., delete: _Optional[bool] = ...) -> None: ...

class GroupPartReply(_message.Message):
    __slots__ = ("name", "found", "attempt", "members", "missing", "created_at", "nodes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    found: bool
    attempt: str
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    missing: _containers.RepeatedCompositeFieldContainer[GroupMember]
    created_at: float
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., found: _Optional[bool] = ..., attempt: _Optional[str] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ..., missing: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ..., created_at: _Optional[float] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...
