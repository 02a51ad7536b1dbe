"""What the service records about turns: metrics per event and per turn, one log line per turn."""

from __future__ import annotations

import logging
import time

from audiochat.v1 import audiochat_pb2 as pb
from service import metrics
from service.metrics import TransportMetrics
from service.normalizer import SAMPLE_RATE_HZ
from service.turn import Turn

log = logging.getLogger("audiochat.turns")

# Transports a trusted edge may name in the call's metadata; anything else counts as plain gRPC.
TRANSPORTS = frozenset({"grpc", "sse", "websocket", "openai"})
TRANSPORT_METADATA_KEY = "audiochat-transport"


def event_sent(meter: TransportMetrics, turn: Turn, event: pb.TurnEvent, read_at: float) -> None:
    """An event was handed to the client's transport: the hot path, so one clock read and few checks."""
    now = time.perf_counter()
    meter.relay_added.observe(now - read_at)
    if turn.first_audio_at is None and event.HasField("audio"):
        turn.first_audio_at = now
        meter.first_audio[turn.upstream_api].observe(now - turn.accepted_at)
        if turn.speech_ended_at is not None:
            metrics.SPEECH_TO_FIRST_AUDIO.observe(max(now - turn.speech_ended_at, 0.0))
    elif turn.first_text_at is None and event.HasField("text"):
        turn.first_text_at = now
        meter.first_text.observe(now - turn.accepted_at)


def interrupted_after_end(meter: TransportMetrics, played_ms: int) -> None:
    """The listener stopped an answer that had fully arrived (the usual barge-in: models outrun playback)."""
    meter.interruptions.inc()
    log.info(
        "answer interrupted after it arrived", extra={"transport": meter.transport, "played_ms": played_ms}
    )


def turn_committed(mode: str) -> None:
    """A turn went to the model: `text`, `manual` (Commit), `server_vad` (end of speech), `upstream_vad`
    (the Realtime upstream's own detection started an answer) or `tool_result`."""
    metrics.TURN_COMMITS.labels(mode).inc()


def barge_in(meter: TransportMetrics) -> None:
    """Server VAD heard the user talk over an answer and stopped it."""
    meter.interruptions.inc()
    metrics.BARGE_INS.labels(meter.transport).inc()


def outcome_name(turn: Turn) -> str:
    """The finish reason as a short lowercase label (stop, length, interrupted, error, ...)."""
    if turn.completion is None:
        return "cancelled"
    return pb.FinishReason.Name(turn.completion.reason).removeprefix("FINISH_REASON_").lower()


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


def turn_finished(turn: Turn, transport: str, ended_at: float) -> None:
    """Count the turn and log its outcome and timings in one line."""
    completion = turn.completion
    error = completion.error if completion is not None and completion.HasField("error") else None
    error_code = (
        pb.ErrorCode.Name(error.code).removeprefix("ERROR_CODE_").lower() if error is not None else None
    )
    outcome = outcome_name(turn)
    audio_in = turn.user.audio.duration_ms / 1000 if turn.user.audio else 0.0
    audio_out = completion.audio_samples / SAMPLE_RATE_HZ if completion is not None else 0.0
    metrics.record_turn(transport, outcome, ended_at - turn.accepted_at, error_code, turn.upstream_api)
    metrics.record_audio(audio_in, audio_out)
    if turn.usage is not None:
        metrics.record_usage(turn.usage)
    if turn.upstream_first_byte_at is not None:
        metrics.UPSTREAM_TIME_TO_FIRST_BYTE.labels(turn.upstream_api).observe(
            turn.upstream_first_byte_at - turn.accepted_at
        )
    # A failure is worth a look: warning, with the reason and the request id to quote to the upstream.
    log.log(
        logging.WARNING if error is not None else logging.INFO,
        "turn %s",
        outcome,
        extra={
            "turn_id": turn.turn_id,
            "transport": transport,
            "outcome": outcome,
            "model": turn.settings.model,
            "duration_ms": _ms(turn.accepted_at, ended_at),
            "time_to_first_audio_ms": _ms(turn.accepted_at, turn.first_audio_at),
            "time_to_first_text_ms": _ms(turn.accepted_at, turn.first_text_at),
            "upstream_time_to_first_byte_ms": _ms(turn.accepted_at, turn.upstream_first_byte_at),
            "audio_samples": completion.audio_samples if completion is not None else 0,
            "played_ms": completion.played_ms
            if outcome == "interrupted" and completion is not None
            else None,
            "input_audio_ms": round(audio_in * 1000),
            "upstream_request_id": turn.upstream_request_id,
            "error_code": error_code,
            "error_message": error.message if error is not None else None,
            "upstream_error_code": error.upstream_code or None if error is not None else None,
        },
    )
