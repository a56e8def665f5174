"""Replication of local volumes to other nodes: the pure core (docs/design/replication.md).

No gRPC, no Kubernetes: the agent carries the frames between nodes, the controller decides
epochs and placement. ::

    wire       frames (StreamHeader, Extent, Zero, StreamEnd, Ack), encode/decode
    points     point ids e<epoch>-<seq>, their order, snapshot names, node label keys
    state      the persisted copy state (CopyState, Role) and its store
    sending    Sender: take a point, stream the changed ranges, record acks
    receiving  Receiver: apply a stream to a private copy, commit atomically
    roles      promote, demote, check_writable, release, common_base
"""

from statehold.replication.points import common_base, node_label
from statehold.replication.receiving import Receiver
from statehold.replication.roles import check_writable, copy_state, demote, promote, release
from statehold.replication.sending import Sender, StreamPlan
from statehold.replication.state import CopyState, Role
from statehold.replication.wire import (
    MAX_FRAME,
    MAX_PAYLOAD,
    Ack,
    Extent,
    Frame,
    StreamEnd,
    StreamHeader,
    Zero,
    decode,
    decode_ack,
    encode,
)

__all__ = [
    "MAX_FRAME", "MAX_PAYLOAD", "Ack", "CopyState", "Extent", "Frame", "Receiver", "Role",
    "Sender", "StreamEnd", "StreamHeader", "StreamPlan", "Zero", "check_writable",
    "common_base", "copy_state", "decode", "decode_ack", "demote", "encode", "node_label",
    "promote", "release",
]
