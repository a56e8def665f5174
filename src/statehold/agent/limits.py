"""gRPC channel settings both ends of an agent connection must agree on.

Messages: a replication frame is at most about 1 MiB of payload plus its header; 8 MiB
leaves room without letting a peer make us buffer much. Keepalive: both ends ping every
2 s and give up after 3 s without an answer, so a cut link or a frozen peer ends a stream
in seconds (a replica must release the volume for the next stream; a primary must try its
next cycle); the server accepts pings that often (gRPC's default would answer a client
pinging every 2 s with GOAWAY ``too_many_pings``).
"""

from __future__ import annotations

MAX_MESSAGE = 8 * 1024 * 1024
KEEPALIVE_MS = 2000
KEEPALIVE_TIMEOUT_MS = 3000

CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
