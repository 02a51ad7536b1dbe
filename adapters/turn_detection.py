"""The WebSocket config's `turn_detection` object (the Realtime API's shape) as a TurnDetection.

Only the shape is checked here; the ranges are the core's (service.hands_free), so gRPC and WebSocket
clients get the same message for the same mistake.
"""

from __future__ import annotations

from typing import Any, Final

from adapters.turn_request import RequestError
from audiochat.v1 import audiochat_pb2 as pb

TYPES: Final = {
    "manual": pb.TURN_DETECTION_TYPE_MANUAL,
    "server_vad": pb.TURN_DETECTION_TYPE_SERVER_VAD,
    # The Realtime upstream's own detection (service.upstream_vad); refused on Chat Completions.
    "upstream_server_vad": pb.TURN_DETECTION_TYPE_UPSTREAM_SERVER_VAD,
    "upstream_semantic_vad": pb.TURN_DETECTION_TYPE_UPSTREAM_SEMANTIC_VAD,
}
_MS_FIELDS: Final = ("prefix_padding_ms", "silence_duration_ms", "min_speech_duration_ms", "echo_guard_ms")


def turn_detection(value: Any) -> pb.TurnDetection | None:
    """{"type": "manual" | "server_vad" | "upstream_server_vad" | "upstream_semantic_vad", "threshold"?,
    "prefix_padding_ms"?, ...}; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError("'turn_detection' must be an object")
    unknown = sorted(set(value) - {"type", "threshold", *_MS_FIELDS})
    if unknown:
        raise RequestError(f"unknown field 'turn_detection.{unknown[0]}'")
    kind = value.get("type", "manual")
    if kind not in TYPES:
        raise RequestError(
            '\'turn_detection.type\' must be "manual", "server_vad", "upstream_server_vad"'
            ' or "upstream_semantic_vad"'
        )
    detection = pb.TurnDetection(type=TYPES[kind])
    threshold = value.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise RequestError("'turn_detection.threshold' must be a number")
        detection.threshold = float(threshold)
    for field in _MS_FIELDS:
        ms = value.get(field)
        if ms is None:
            continue
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms < 2**32:
            raise RequestError(f"'turn_detection.{field}' must be a non-negative integer (ms)")
        setattr(detection, field, ms)
    return detection
