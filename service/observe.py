"""What the service records about each turn: one structured log line (and, with metrics, the counters)."""

from __future__ import annotations

import logging

from audiochat.v1 import audiochat_pb2 as pb
from service.turn import Turn

log = logging.getLogger("audiochat.turns")

# Transports a trusted edge may name in the call's metadata; anything else counts as plain gRPC.
TRANSPORTS = frozenset({"grpc", "sse", "websocket", "openai"})
TRANSPORT_METADATA_KEY = "audiochat-transport"


def outcome_name(turn: Turn) -> str:
    """The finish reason as a short lowercase label (stop, length, interrupted, error, ...)."""
    if turn.completion is None:
        return "cancelled"
    return pb.FinishReason.Name(turn.completion.reason).removeprefix("FINISH_REASON_").lower()


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


def turn_finished(turn: Turn, transport: str, ended_at: float) -> None:
    """Log the turn's outcome and timings in one line."""
    completion = turn.completion
    error = completion.error if completion is not None and completion.HasField("error") else None
    log.info(
        "turn %s",
        outcome_name(turn),
        extra={
            "turn_id": turn.turn_id,
            "transport": transport,
            "outcome": outcome_name(turn),
            "model": turn.settings.model,
            "duration_ms": _ms(turn.accepted_at, ended_at),
            "time_to_first_audio_ms": _ms(turn.accepted_at, turn.first_audio_at),
            "time_to_first_text_ms": _ms(turn.accepted_at, turn.first_text_at),
            "upstream_time_to_first_byte_ms": _ms(turn.accepted_at, turn.upstream_first_byte_at),
            "audio_samples": completion.audio_samples if completion is not None else 0,
            "input_audio_ms": turn.user.audio.duration_ms if turn.user.audio else 0,
            "upstream_request_id": turn.upstream_request_id,
            "error_code": pb.ErrorCode.Name(error.code) if error is not None else None,
        },
    )
