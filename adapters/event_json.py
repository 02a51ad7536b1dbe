"""TurnEvents as the JSON objects both the SSE and the WebSocket edge send (audio excepted).

One mapping, so a web page and a mobile client read the same field names: snake_case, enums as short
lowercase words (`stop`, `transcript`, `pcm16`).
"""

from __future__ import annotations

from typing import Any

from adapters.status import upstream_json
from adapters.tool_json import call_json, tool_call_delta_json
from audiochat.v1 import audiochat_pb2 as pb
from service.usage import sent as usage_json_of

Json = dict[str, Any]

# The oneof field of TurnEvent -> the event's name on the wire.
EVENT_NAMES = {
    "started": "turn.started",
    "text": "text.delta",
    "audio": "audio.delta",
    "usage": "usage",
    "completed": "turn.completed",
    "tool_call": "tool_call.delta",
}


def reason_name(reason: pb.FinishReason.ValueType) -> str:
    """FINISH_REASON_CONTENT_FILTER -> content_filter."""
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def audio_format_json(audio_format: pb.AudioFormat) -> Json:
    """{"encoding": "pcm16", "sample_rate_hz": 24000, "channels": 1}."""
    return {
        "encoding": pb.AudioEncoding.Name(audio_format.encoding).removeprefix("AUDIO_ENCODING_").lower(),
        "sample_rate_hz": audio_format.sample_rate_hz,
        "channels": audio_format.channels or 1,
    }


def started_json(event: pb.TurnEvent) -> Json:
    started = event.started
    return {
        "turn_id": event.turn_id,
        "model": started.model,
        "audio_format": audio_format_json(started.audio_format),
        "input_audio_ms": started.input_audio_ms,
        "upstream_request_id": started.upstream_request_id,
    }


def text_json(event: pb.TurnEvent) -> Json:
    source = event.text.source
    return {
        "text": event.text.text,
        "source": "transcript" if source == pb.TEXT_SOURCE_TRANSCRIPT else "content",
    }


def usage_json(event: pb.TurnEvent) -> Json:
    return usage_json_of(event.usage)


def turn_error_json(error: pb.TurnError) -> Json:
    """A TurnError; `code` is the status name in snake_case, like the HTTP error bodies."""
    return {
        "code": pb.ErrorCode.Name(error.code).removeprefix("ERROR_CODE_").lower(),
        "message": error.message,
        "retryable": error.retryable,
        "retry_after_ms": error.retry_after_ms,
        "upstream_code": error.upstream_code,
        "upstream": upstream_json(error.upstream) if error.HasField("upstream") else None,
    }


def completed_json(event: pb.TurnEvent) -> Json:
    done = event.completed
    return {
        "turn_id": event.turn_id,
        "reason": reason_name(done.reason),
        "transcript": done.transcript,
        "audio_id": done.audio_id,
        "audio_expires_at": done.audio_expires_at,
        "audio_samples": done.audio_samples,
        "played_ms": done.played_ms,
        "error": turn_error_json(done.error) if done.HasField("error") else None,
        "tool_calls": [call_json(call) for call in done.tool_calls],
    }


# Audio is absent on purpose: each edge encodes it its own way (base64 in SSE, binary frames on WebSocket).
JSON_OF = {
    "started": started_json,
    "text": text_json,
    "usage": usage_json,
    "completed": completed_json,
    "tool_call": tool_call_delta_json,
}
