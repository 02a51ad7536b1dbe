"""Prometheus metrics: names, units, buckets and labels as the design's "Metrics" section says.

Labels are bounded (transport, outcome, status code, direction, modality): never a user, turn or
conversation. Label children are resolved once per transport and cached, so the per-event cost on the hot
path is one clock read and one histogram observation.
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
    make_asgi_app,
)
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from audiochat.v1 import audiochat_pb2 as pb
from service.usage import sent as usage_sent

# A `*_created` series per counter and histogram child doubles what is scraped and is rarely queried.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Each process exports what it measures, once. The core's families (and the process's own: python_info,
# process_*) are in the default REGISTRY, served on AUDIOCHAT_METRICS_PORT by roles all and core. The
# edge's families are in EDGE_REGISTRY, served at the edge's /metrics; an edge-only process (role edge)
# has no core port, so its /metrics adds the process families: EDGE_PROCESS_REGISTRY.
EDGE_REGISTRY = CollectorRegistry()
EDGE_PROCESS_REGISTRY = CollectorRegistry()
# The transports an edge relays; the core's own "grpc" never passes through an edge.
EDGE_TRANSPORTS = ("sse", "websocket", "openai")

LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40,
)  # fmt: skip
# The gateway's own per-event latency lives far below the turn-level buckets.
RELAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1)

# The API that answered a turn (service.upstream_routing): a bounded label, so time to first audio and turns
# compare per upstream.
UPSTREAM_APIS = ("chat_completions", "realtime")

TIME_TO_FIRST_AUDIO = Histogram(
    "audiochat_time_to_first_audio_seconds",
    "Turn accepted to its first audio delta handed to the client's transport, by transport and upstream API.",
    ["transport", "upstream"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TEXT = Histogram(
    "audiochat_time_to_first_text_seconds",
    "Turn accepted to its first text delta handed to the client's transport.",
    ["transport"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_TIME_TO_FIRST_BYTE = Histogram(
    "audiochat_upstream_time_to_first_byte_seconds",
    "Upstream request sent to its first streamed chunk, by upstream API.",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    "audiochat_turn_duration_seconds",
    "Turn accepted to its last event.",
    ["transport", "outcome"],
    buckets=LATENCY_BUCKETS,
)
RELAY_ADDED = Histogram(
    "audiochat_relay_added_seconds",
    "Upstream chunk read to its event handed to the client's transport: the gateway's own latency per event.",
    ["transport"],
    buckets=RELAY_BUCKETS,
)
EDGE_RELAY_ADDED = Histogram(
    "audiochat_edge_relay_added_seconds",
    "At the edge: event received from the core to written to the HTTP or WebSocket client.",
    ["transport"],
    buckets=RELAY_BUCKETS,
    registry=EDGE_REGISTRY,
)
ACTIVE_STREAMS = Gauge("audiochat_active_streams", "Calls being served now.", ["transport"])
RUNNING_TURNS = Gauge(
    "audiochat_running_turns", "Turns running now, each holding an upstream stream.", ["transport"]
)
OPEN_CONVERSATIONS = Gauge("audiochat_open_conversations", "Converse calls open now.", ["transport"])
TURNS = Counter(
    "audiochat_turns_total",
    "Turns by how they ended, and the upstream API.",
    ["transport", "outcome", "upstream"],
)
INTERRUPTIONS = Counter("audiochat_interruptions_total", "Answers stopped by the client.", ["transport"])
AUDIO_SECONDS = Counter("audiochat_audio_seconds_total", "Seconds of audio relayed.", ["direction"])
TOKENS = Counter("audiochat_tokens_total", "Tokens the upstream reported.", ["direction", "modality"])
UPSTREAM_ERRORS = Counter("audiochat_upstream_errors_total", "Failed upstream turns by status.", ["code"])
# The Realtime API reports what is left of its limits (`rate_limits.updated`); `limit` is requests or tokens.
UPSTREAM_RATE_LIMIT_REMAINING = Gauge(
    "audiochat_upstream_rate_limit_remaining",
    "What the upstream last said is left of its rate limit, by upstream and limit (requests, tokens).",
    ["upstream", "limit"],
)
RESUMES = Counter(
    "audiochat_resumes_total", "SSE reconnections with Last-Event-ID.", ["result"], registry=EDGE_REGISTRY
)
RESUME_STORE_ERRORS = Counter(
    "audiochat_resume_store_errors_total",
    "Failed calls to the shared resume store (Redis) by operation: open, write, heartbeat, find, read, ...",
    ["operation"],
    registry=EDGE_REGISTRY,
)
for _operation in ("open", "write", "heartbeat", "find", "read", "reader", "admit", "forget"):
    RESUME_STORE_ERRORS.labels(_operation)  # every series from 0, so a first failure shows in rate()
CONVERSATION_RESUMES = Counter(
    "audiochat_conversation_resumes_total",
    "Conversations resumed after a dropped connection, or refused: not_found, not_owner, unavailable.",
    ["result"],
)
# Hands-free (server VAD): how turns are committed, voice barge-ins, and the wait after speaking.
TURN_COMMITS = Counter(
    "audiochat_turn_commits_total",
    "Turns sent to the model, by how they were committed: text, manual (Commit), server_vad, upstream_vad"
    " (the Realtime upstream's own detection) or tool_result.",
    ["mode"],
)
BARGE_INS = Counter(
    "audiochat_barge_ins_total", "Answers interrupted by the user's voice (server VAD).", ["transport"]
)
SPEECH_TO_FIRST_AUDIO = Histogram(
    "audiochat_speech_end_to_first_audio_seconds",
    "Server VAD: end of the user's speech to the answer's first audio handed to the client's transport"
    " (includes silence_duration_ms).",
    buckets=LATENCY_BUCKETS,
)
# The edge's own load (what its HPA scales on); the core's audiochat_active_streams counts its calls.
EDGE_ACTIVE_STREAMS = Gauge(
    "audiochat_edge_active_streams",
    "Streams this edge relays now: SSE turns, WebSocket conversations, OpenAI-compatible calls.",
    registry=EDGE_REGISTRY,
)
# The resume store is a bounded cache: what it holds explains an edge's memory (make soak reports both).
SSE_RESUME_BYTES = Gauge(
    "audiochat_sse_resume_buffer_bytes",
    "Bytes of SSE events this edge holds for resumes and readers (at most AUDIOCHAT_RESUME_BUFFER_BYTES).",
    registry=EDGE_REGISTRY,
)
SSE_RESUME_TURNS = Gauge(
    "audiochat_sse_resume_turns",
    "SSE turns this edge holds: running, or ended less than AUDIOCHAT_RESUME_SECONDS ago.",
    registry=EDGE_REGISTRY,
)
# The core's in-process conversation store is the other bounded cache (make soak subtracts both).
CONVERSATION_STORE_BYTES = Gauge(
    "audiochat_conversation_store_bytes",
    "Memory of the conversations (configs with history, last answers' events, their Python objects counted)"
    " this core keeps for resumes (at most AUDIOCHAT_MAX_STORED_CONVERSATION_BYTES; none with Redis).",
)
CONVERSATION_STORE_CONVERSATIONS = Gauge(
    "audiochat_conversation_store_conversations",
    "Conversations this core keeps in its memory for resumes (at most AUDIOCHAT_MAX_STORED_CONVERSATIONS).",
)
BUILD_INFO = Info("audiochat_build", "Version of the running gateway.")
GC_PAUSE = Histogram(
    "audiochat_gc_pause_seconds",
    "CPU time of each garbage collection, by generation (2: full); every stream waits for it.",
    ["generation"],
    buckets=RELAY_BUCKETS,
)
for _collector in (
    EDGE_RELAY_ADDED,
    RESUMES,
    RESUME_STORE_ERRORS,
    EDGE_ACTIVE_STREAMS,
    SSE_RESUME_BYTES,
    SSE_RESUME_TURNS,
    PROCESS_COLLECTOR,
    PLATFORM_COLLECTOR,
    GC_COLLECTOR,
    GC_PAUSE,
    BUILD_INFO,
):
    EDGE_PROCESS_REGISTRY.register(_collector)
_EDGE_RELAY = {transport: EDGE_RELAY_ADDED.labels(transport) for transport in EDGE_TRANSPORTS}

_AUDIO_IN = AUDIO_SECONDS.labels("in")
_AUDIO_OUT = AUDIO_SECONDS.labels("out")
_TOKENS = {
    (direction, modality): TOKENS.labels(direction, modality)
    for direction in ("input", "output")
    for modality in ("text", "audio", "other")
}


def _version() -> str:
    try:
        return metadata.version("audiochat")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version(), "python": platform.python_version()})


@dataclass(frozen=True, slots=True)
class TransportMetrics:
    """The label children of one transport, resolved once."""

    first_audio: dict[str, Histogram]  # by upstream API
    first_text: Histogram
    relay_added: Histogram
    active: Gauge
    running: Gauge
    conversations: Gauge
    interruptions: Counter
    transport: str


@cache
def for_transport(transport: str) -> TransportMetrics:
    """Cached children for a transport (the transport set is bounded by the servicer)."""
    return TransportMetrics(
        first_audio={api: TIME_TO_FIRST_AUDIO.labels(transport, api) for api in UPSTREAM_APIS},
        first_text=TIME_TO_FIRST_TEXT.labels(transport),
        relay_added=RELAY_ADDED.labels(transport),
        active=ACTIVE_STREAMS.labels(transport),
        running=RUNNING_TURNS.labels(transport),
        conversations=OPEN_CONVERSATIONS.labels(transport),
        interruptions=INTERRUPTIONS.labels(transport),
        transport=transport,
    )


def edge_relay(transport: str) -> Histogram:
    """The edge's relay histogram child of one of EDGE_TRANSPORTS (KeyError for any other)."""
    return _EDGE_RELAY[transport]


def record_usage(usage: pb.Usage) -> None:
    """Count the tokens of one turn as the upstream reported them. Tokens of a direction's total that the
    upstream did not split into text and audio count as modality "other": counted, not guessed."""
    counts = usage_sent(usage)
    for direction in ("input", "output"):
        split = 0
        for modality in ("text", "audio"):
            count = counts.get(f"{direction}_{modality}_tokens")
            if count is not None:
                _TOKENS[direction, modality].inc(count)
                split += count
        total = counts.get(f"{direction}_tokens", 0)
        if total > split:
            _TOKENS[direction, "other"].inc(total - split)


def record_audio(seconds_in: float, seconds_out: float) -> None:
    """Count audio relayed in each direction."""
    if seconds_in:
        _AUDIO_IN.inc(seconds_in)
    if seconds_out:
        _AUDIO_OUT.inc(seconds_out)


def record_turn(
    transport: str, outcome: str, duration_seconds: float, error_code: str | None, upstream: str
) -> None:
    """Count a finished turn (by the upstream API that answered it) and its duration."""
    TURNS.labels(transport, outcome, upstream).inc()
    TURN_DURATION.labels(transport, outcome).observe(duration_seconds)
    if outcome == "interrupted":
        for_transport(transport).interruptions.inc()
    if error_code is not None:
        UPSTREAM_ERRORS.labels(error_code).inc()


class _GCWatch:
    """Times each collection through gc.callbacks: two calls per collection, nothing per event.

    In CPU time of the collecting thread: the pause itself, without the time a busy machine schedules
    other work in between (which is not the collector's and would swamp it).
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._pause = [GC_PAUSE.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self._pause[info["generation"]].observe(time.thread_time() - self._started)


def watch_gc() -> None:
    """Record every garbage collection's pause in `audiochat_gc_pause_seconds` (once per process)."""
    if not any(isinstance(callback, _GCWatch) for callback in gc.callbacks):
        gc.callbacks.append(_GCWatch())


def asgi_app() -> Any:
    """The core's exposition (the default REGISTRY) at GET /metrics, for its own port; 404 elsewhere."""
    exposition = make_asgi_app(REGISTRY)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await exposition(scope, receive, send)
        elif scope["type"] == "http":
            await PlainTextResponse("not found: metrics are at /metrics\n", status_code=404)(
                scope, receive, send
            )

    return app


def edge_exposition(*, with_process: bool) -> tuple[bytes, str]:
    """The edge's families as text, and the content type; `with_process` adds the process's own families
    and build info, for an edge-only process that has no core metrics port to export them."""
    return generate_latest(EDGE_PROCESS_REGISTRY if with_process else EDGE_REGISTRY), CONTENT_TYPE_LATEST
