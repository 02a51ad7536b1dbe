"""Server-sent events: each TurnEvent encoded once, as the exact bytes every reader (and a resume) gets."""

from __future__ import annotations

import base64
import json
from typing import Any

from adapters.event_json import EVENT_NAMES, JSON_OF
from audiochat.v1 import audiochat_pb2 as pb

HEARTBEAT = b": keep-alive\n\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx would otherwise buffer the stream until it ends
    "Connection": "keep-alive",
}
MEDIA_TYPE = "text/event-stream"

_ENCODING_NAMES = {
    value: name.removeprefix("AUDIO_ENCODING_").lower().encode() for name, value in pb.AudioEncoding.items()
}
_EVENT_LINES = {oneof: f"event: {name}\nid: ".encode() for oneof, name in EVENT_NAMES.items()}


def parse_event_id(value: str) -> tuple[str, int] | None:
    """(turn id, sequence) of a Last-Event-ID, or None if it is not one of ours."""
    turn_id, _, sequence = value.strip().rpartition(":")
    # ASCII digits only ("²" is a digit to str.isdigit), and no more than a uint64 holds.
    if not turn_id or not (sequence.isascii() and sequence.isdigit()) or len(sequence) > 19:
        return None
    return turn_id, int(sequence)


def _dumps(value: Any) -> bytes:
    # JSON never holds a raw newline, so one data line carries the whole payload.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_turn_event(event: pb.TurnEvent) -> bytes:
    """One TurnEvent as an SSE event; audio is built by hand so its base64 is copied once."""
    kind = event.WhichOneof("event")
    if kind is None:
        raise ValueError("a TurnEvent without an event")
    head = _EVENT_LINES[kind] + f"{event.turn_id}:{event.sequence}\ndata: ".encode()
    if kind == "audio":
        audio = event.audio
        return b"".join(
            (
                head,
                b'{"data":"',
                base64.b64encode(audio.data),
                b'","encoding":"%s","sample_rate_hz":%d,"start_sample":%d,"samples":%d}\n\n'
                % (
                    _ENCODING_NAMES[audio.format.encoding],
                    audio.format.sample_rate_hz,
                    audio.start_sample,
                    audio.samples,
                ),
            )
        )
    return head + _dumps(JSON_OF[kind](event)) + b"\n\n"


def encode_error(turn_id: str, sequence: int, fields: dict[str, Any]) -> bytes:
    """The `error` event ending a stream whose call failed after it started: {"error": EdgeError.fields()}."""
    body = _dumps({"error": fields})
    return f"event: error\nid: {turn_id}:{sequence}\ndata: ".encode() + body + b"\n\n"
