"""gRPC keepalive: one policy for the pings a channel sends and the pings the core accepts.

A channel pings every `keepalive_seconds` so a dead peer (or a NAT that forgot the connection) is noticed
between turns, also while a call waits on a quiet upstream. The core must accept those pings: gRPC's
default policy allows one ping per 5 minutes without data and answers a third early one with GOAWAY
"too_many_pings", which cuts every call sharing the connection. The core therefore accepts pings every
`keepalive_min_ping_seconds` (at most `keepalive_seconds`, checked by Settings.validated).
"""

from __future__ import annotations

from service.settings import Settings


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """The pings a client channel sends (the edge's channel to the core, the core's own pings)."""
    return [
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        # Keep pinging an idle conversation (no call data either way) and between calls.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The core's own pings and the ping policy it enforces on its clients."""
    return [
        *channel_options(settings),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.keepalive_min_ping_seconds)),
        # Two early pings are forgiven (timer jitter); the third closes the connection.
        ("grpc.http2.max_ping_strikes", 2),
    ]
