"""Channel and server options shared by both ends of the streams."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# The least a coordinator may be configured to accept: hellos and ordinary results fit.
MIN_MESSAGE_BYTES = 64 * 1024

# Keepalive pings find a half-open stream within seconds, not a TCP timeout.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # reconnects are ours to pace (jittered backoff), not the channel's
    ("grpc.enable_retries", 0),
]

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # a second workflowd on the same address must fail to start, not share the port
    ("grpc.so_reuseport", 0),
]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """SERVER_OPTIONS with another message size limit, both ways."""
    sizes = {"grpc.max_send_message_length", "grpc.max_receive_message_length"}
    return [(key, max_message_bytes if key in sizes else value) for key, value in SERVER_OPTIONS]
