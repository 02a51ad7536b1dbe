"""Settings from the environment, overridable by command-line flags. One table, documented in the README."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from service.turn_input import Defaults, Limits
from service.upstream import Deadlines

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `audiochat serve` can be told."""

    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = ""
    # A kind of service.upstream_registry.KINDS (openai, openai-realtime, offline...); empty means openai when
    # a key is set, else offline.
    upstream: str = ""
    model: str = ""  # empty: the upstream kind's own default (gpt-4o-audio-preview, gpt-realtime)
    # The model-name mapping (service.upstream_routing): comma-separated prefixes of the models each API
    # answers whatever AUDIOCHAT_UPSTREAM says; other models go to the upstream's own API.
    realtime_models: str = "gpt-realtime,gpt-4o-realtime,gpt-4o-mini-realtime"
    chat_completions_models: str = "gpt-4o-audio,gpt-4o-mini-audio,gpt-audio"
    voice: str = "alloy"
    bind: str = (
        "127.0.0.1"  # all three ports; loopback unless told otherwise (the image and chart say 0.0.0.0)
    )
    grpc_port: int = 50051
    http_port: int = 8080
    metrics_port: int = 9090
    drain_seconds: float = 25.0
    max_streams: int = 1000  # running turns (StreamTurn calls and conversations' turns)
    max_conversations: int = 10_000  # open Converse calls, idle or not
    max_message_bytes: int = 16 * 1024 * 1024
    max_connection_age_seconds: float = 0.0
    # gRPC keepalive, one policy for both ends: the edge's channel (and the core) ping every
    # `keepalive_seconds` and give up on a peer silent for `keepalive_timeout_seconds` more; the core
    # accepts pings as often as every `keepalive_min_ping_seconds`, which must not exceed the former.
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    keepalive_min_ping_seconds: float = 10.0
    # Deadlines on the upstream (see service.upstream.Deadlines): the first is for the answer's first bytes.
    upstream_timeout_seconds: float = 30.0
    upstream_connect_timeout_seconds: float = 5.0
    upstream_idle_timeout_seconds: float = 20.0
    upstream_max_wait_seconds: float = 5.0
    upstream_max_retries: int = 2
    max_turn_audio_bytes: int = 20 * 1024 * 1024
    max_turn_audio_seconds: float = 300.0
    max_audio_decode_seconds: float = 10.0  # time to decode one recording (m4a, webm, ogg, flac...)
    log_level: str = "info"
    offline_realtime_factor: float = 0.0  # 0: the offline voice streams as fast as it speaks
    # The HTTP/WebSocket edge (adapters/); see adapters/README-edge.md.
    role: str = "all"  # all (core + edge), core (gRPC only) or edge (HTTP only, against core_target)
    core_target: str = ""  # host:port of the core, for role edge
    api_keys: str = field(default="", repr=False)  # comma-separated; empty (and no file) means open
    api_keys_file: str = ""  # one key per line
    allowed_origins: str = ""  # comma-separated origins, or *; empty means same-origin only
    max_body_bytes: int = 32 * 1024 * 1024
    ws_max_message_bytes: int = 4 * 1024 * 1024
    idle_timeout_seconds: float = 300.0
    auth_timeout_seconds: float = 5.0
    heartbeat_seconds: float = 15.0
    resume_seconds: float = 60.0
    resume_buffer_bytes: int = 256 * 1024 * 1024
    # An SSE turn whose client left is kept running this long for a resume, then stopped upstream.
    sse_orphan_seconds: float = 10.0
    # What one SSE turn may hold unread (or read but resumable) before its reading from the core waits.
    sse_turn_buffer_bytes: int = 8 * 1024 * 1024
    # Shared state across replicas (service/redis_client.py): empty keeps it in this process's memory.
    redis_url: str = field(default="", repr=False)  # redis:// or rediss://, may hold a password
    redis_timeout_seconds: float = 1.0  # connect, and each command's reply
    # When Redis cannot be reached: "continue" serves turns without shared state (no cross-pod resume),
    # "fail" refuses new turns UNAVAILABLE until it is back.
    redis_unavailable: str = "continue"
    # Conversation resume (service/conversation_resume.py): a conversation is kept this long after its last
    # change; a turn whose call ended runs on this long for a resume (0: stopped at once, as before);
    # a turn's events kept for a resume are capped at this many bytes; without Redis, this process keeps
    # at most this many conversations (the least recently changed go first).
    conversation_ttl_seconds: float = 3600.0
    conversation_orphan_seconds: float = 10.0
    conversation_turn_log_bytes: int = 8 * 1024 * 1024
    max_stored_conversations: int = 10_000
    # ... and at most this many bytes of them (configs with their history, and last turns' events).
    max_stored_conversation_bytes: int = 256 * 1024 * 1024

    @property
    def upstream_kind(self) -> str:
        """The upstream actually used."""
        return self.upstream or ("openai" if self.openai_api_key else "offline")

    @property
    def default_model(self) -> str:
        """The model when a request names none: AUDIOCHAT_MODEL, else the upstream kind's."""
        from service.upstream_registry import KINDS  # the registry imports the upstreams, which import this

        kind = KINDS.get(self.upstream_kind)
        return self.model or (kind.default_model if kind is not None else Defaults().model)

    @property
    def defaults(self) -> Defaults:
        """Defaults for what a TurnConfig leaves empty."""
        return Defaults(model=self.default_model, voice=self.voice)

    @property
    def deadlines(self) -> Deadlines:
        """How long the gateway waits on the upstream, phase by phase."""
        return Deadlines(
            connect_seconds=self.upstream_connect_timeout_seconds,
            first_byte_seconds=self.upstream_timeout_seconds,
            idle_seconds=self.upstream_idle_timeout_seconds,
            max_wait_seconds=self.upstream_max_wait_seconds,
            max_retries=self.upstream_max_retries,
        )

    @property
    def limits(self) -> Limits:
        """Bounds on one turn."""
        return Limits(
            max_turn_audio_bytes=self.max_turn_audio_bytes,
            max_turn_audio_seconds=self.max_turn_audio_seconds,
            max_audio_decode_seconds=self.max_audio_decode_seconds,
            # Half the message limit leaves the rest of the event (and gRPC's framing) ample room.
            max_audio_delta_bytes=min(Limits().max_audio_delta_bytes, self.max_message_bytes // 2),
        )

    def validated(self) -> Settings:
        """Self, or a ValueError naming the first bad setting."""
        # Each message names both ways to give the setting: the user may have used either.
        from service.upstream_registry import KINDS  # as in default_model

        kind = KINDS.get(self.upstream_kind)
        if kind is None:
            raise ValueError(
                f"upstream (--upstream or AUDIOCHAT_UPSTREAM) must be one of {', '.join(KINDS)}, "
                f"not {self.upstream!r}"
            )
        if kind.needs_key and not self.openai_api_key:
            raise ValueError(
                f"upstream {kind.name} (--upstream or AUDIOCHAT_UPSTREAM) needs a key: set OPENAI_API_KEY"
            )
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(
                f"log level (--log-level or AUDIOCHAT_LOG_LEVEL) must be one of {', '.join(LOG_LEVELS)}, "
                f"not {self.log_level!r}"
            )
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be a port number, not {port}")
        if self.max_streams < 1 or self.max_conversations < 1 or self.max_message_bytes < 1024:
            raise ValueError(
                "max_streams and max_conversations must be positive and max_message_bytes at least 1024"
            )
        if not 0 < self.keepalive_min_ping_seconds <= self.keepalive_seconds:
            raise ValueError(
                "AUDIOCHAT_KEEPALIVE_MIN_PING_SECONDS must be positive and at most"
                " AUDIOCHAT_KEEPALIVE_SECONDS (else the core refuses the edge's own pings: 'too many pings')"
            )
        if self.keepalive_timeout_seconds <= 0:
            raise ValueError("AUDIOCHAT_KEEPALIVE_TIMEOUT_SECONDS must be positive")
        if self.redis_unavailable not in ("continue", "fail"):
            raise ValueError(
                f"AUDIOCHAT_REDIS_UNAVAILABLE must be continue or fail, not {self.redis_unavailable!r}"
            )
        if self.conversation_ttl_seconds <= 0 or self.conversation_orphan_seconds < 0:
            raise ValueError(
                "AUDIOCHAT_CONVERSATION_TTL_SECONDS must be positive and"
                " AUDIOCHAT_CONVERSATION_ORPHAN_SECONDS not negative"
            )
        if self.max_stored_conversation_bytes < 1024 * 1024:
            raise ValueError("AUDIOCHAT_MAX_STORED_CONVERSATION_BYTES must be at least 1048576 (1 MiB)")
        if self.conversation_turn_log_bytes < 1024 or self.max_stored_conversations < 1:
            raise ValueError(
                "AUDIOCHAT_CONVERSATION_TURN_LOG_BYTES must be at least 1024 and"
                " AUDIOCHAT_MAX_STORED_CONVERSATIONS positive"
            )
        if self.redis_timeout_seconds <= 0:
            raise ValueError("AUDIOCHAT_REDIS_TIMEOUT_SECONDS must be positive")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("AUDIOCHAT_REDIS_URL must start with redis://, rediss:// or unix://")
        if self.role not in ("all", "core", "edge"):
            raise ValueError(f"AUDIOCHAT_ROLE must be all, core or edge, not {self.role!r}")
        if self.role == "edge" and not self.core_target:
            raise ValueError(
                "role edge needs the core's address: --target HOST:PORT or AUDIOCHAT_CORE_TARGET"
            )
        return self


# Environment variable for each setting; OpenAI's own names are kept so existing deployments just work.
ENVIRONMENT: dict[str, str] = {
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    **{f.name: f"AUDIOCHAT_{f.name.upper()}" for f in fields(Settings) if not f.name.startswith("openai_")},
}


def from_environment(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then from non-None overrides (command-line flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(ENVIRONMENT[f.name])
        if raw is None or raw == "":
            continue
        default: Any = f.default
        kind = type(default)
        try:
            values[f.name] = kind(raw) if kind is not str else raw
        except ValueError:
            raise ValueError(f"{ENVIRONMENT[f.name]}={raw!r} is not a valid {kind.__name__}") from None
    settings = replace(Settings(), **values)
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    return settings.validated()
