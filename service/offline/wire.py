"""Builders for OpenAI Chat Completions bodies and stream chunks, shaped like real captures.

Pure functions of their arguments (plus fresh random ids where asked), so the offline voice and a
benchmark simulator can assemble and pace the same streams.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from service.audio import MODEL_SAMPLE_RATE

Json = dict[str, Any]

SSE_DONE = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT = "fp_0ff1ine0a1"
# Real streams vary their audio pieces between 50 and 200 ms; a fixed cycle keeps that variety
# while staying reproducible.
DEFAULT_PIECE_MS: tuple[int, ...] = (150, 100, 200, 100)

_ALPHANUMERIC = string.ascii_letters + string.digits


def new_completion_id() -> str:
    """Return a fresh `chatcmpl-...` id (29 random characters, like OpenAI's)."""
    return "chatcmpl-" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(29))


def new_audio_id() -> str:
    """Return a fresh `audio_...` handle."""
    return "audio_" + secrets.token_hex(16)


def new_request_id() -> str:
    """Return a fresh `req_...` value for the x-request-id header."""
    return "req_" + secrets.token_hex(16)


@dataclass(frozen=True)
class StreamIdentity:
    """The fields that every chunk of one completion repeats."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = SYSTEM_FINGERPRINT  # None: unknown (a relay that was not told it)
    obfuscate: bool = False

    @classmethod
    def new(cls, model: str, obfuscate: bool = False) -> StreamIdentity:
        """Return the identity of a completion created now."""
        return cls(new_completion_id(), int(time.time()), model, obfuscate=obfuscate)


def chunk(ident: StreamIdentity, delta: Json, finish_reason: str | None = None) -> Json:
    """Return one `chat.completion.chunk` with a single choice."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return _envelope(ident, [choice], None)


def _envelope(ident: StreamIdentity, choices: list[Json], usage: Json | None) -> Json:
    body: Json = {
        "id": ident.id,
        "object": "chat.completion.chunk",
        "created": ident.created,
        "model": ident.model,
        "system_fingerprint": ident.system_fingerprint,
        "choices": choices,
        "usage": usage,
    }
    if ident.obfuscate:
        # OpenAI pads chunks with random text against length side channels; clients must ignore it.
        body["obfuscation"] = secrets.token_urlsafe(secrets.randbelow(12) + 1)
    return body


def role_chunk(ident: StreamIdentity) -> Json:
    """The first chunk of a spoken answer."""
    return chunk(ident, {"role": "assistant", "refusal": None})


def text_role_chunk(ident: StreamIdentity) -> Json:
    """The first chunk of a text-only answer (it carries an empty `content`)."""
    return chunk(ident, {"role": "assistant", "content": "", "refusal": None})


def content_chunk(ident: StreamIdentity, text: str) -> Json:
    """A piece of a text-only answer."""
    return chunk(ident, {"content": text})


def transcript_chunk(ident: StreamIdentity, text: str, audio_id: str | None = None) -> Json:
    """A piece of the transcript; pass `audio_id` on the first one, which also sets `content: null`."""
    if audio_id is None:
        return chunk(ident, {"audio": {"transcript": text}})
    return chunk(ident, {"audio": {"transcript": text, "id": audio_id}, "content": None})


def audio_data_chunk(ident: StreamIdentity, pcm: bytes, audio_id: str | None = None) -> Json:
    """A piece of pcm16, base64-encoded on its own; pass `audio_id` on the first, which repeats `role`."""
    audio: Json = {"data": base64.b64encode(pcm).decode("ascii")}
    if audio_id is None:
        return chunk(ident, {"audio": audio})
    audio["id"] = audio_id
    return chunk(ident, {"audio": audio, "role": "assistant", "content": None, "refusal": None})


def expires_chunk(ident: StreamIdentity, expires_at: int) -> Json:
    """The trailing chunk that holds only the audio id's expiry (and no finish_reason)."""
    return chunk(ident, {"audio": {"expires_at": expires_at}})


def finish_chunk(ident: StreamIdentity, reason: str = "stop") -> Json:
    """An empty delta carrying `finish_reason`."""
    return chunk(ident, {}, reason)


def usage_chunk(ident: StreamIdentity, usage: Json) -> Json:
    """The `include_usage` chunk: no choices, usage filled."""
    return _envelope(ident, [], usage)


def usage_dict(
    prompt_text_tokens: int,
    prompt_audio_tokens: int,
    completion_text_tokens: int,
    completion_audio_tokens: int,
    cached_tokens: int = 0,
) -> Json:
    """Return a usage object whose totals are the sums of its parts."""
    prompt = prompt_text_tokens + prompt_audio_tokens
    completion = completion_text_tokens + completion_audio_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens,
            "audio_tokens": prompt_audio_tokens,
            "text_tokens": prompt_text_tokens,
            "image_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": completion_audio_tokens,
            "text_tokens": completion_text_tokens,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def error_object(
    message: str, type_: str = "server_error", param: str | None = None, code: str | None = None
) -> Json:
    """An OpenAI error: the body of an HTTP error, or an in-stream error frame."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def transcript_pieces(text: str) -> list[str]:
    """Split text word by word the way real streams do: "Hi", " there!", " How", ..."""
    words = text.split()
    return [words[0], *(" " + word for word in words[1:])] if words else []


def pcm_pieces(
    pcm: bytes, piece_ms: Sequence[int] = DEFAULT_PIECE_MS, sample_rate: int = MODEL_SAMPLE_RATE
) -> list[bytes]:
    """Cut pcm16 into whole-sample pieces whose lengths cycle through `piece_ms`."""
    pieces: list[bytes] = []
    offset = 0
    index = 0
    while offset < len(pcm):
        size = max(2, sample_rate * piece_ms[index % len(piece_ms)] // 1000 * 2)
        pieces.append(pcm[offset : offset + size])
        offset += size
        index += 1
    return pieces


def audio_head_chunks(ident: StreamIdentity, audio_id: str, transcript: str) -> Iterator[Json]:
    """The role chunk then the transcript pieces, which run ahead of the audio."""
    yield role_chunk(ident)
    for index, piece in enumerate(transcript_pieces(transcript)):
        yield transcript_chunk(ident, piece, audio_id if index == 0 else None)


def audio_tail_chunks(
    ident: StreamIdentity,
    audio_id: str,
    pieces: Iterable[bytes],
    expires_at: int,
    usage: Json | None = None,
    finish_reason: str | None = None,
    finish_before_expires: bool = False,
) -> Iterator[Json]:
    """Audio pieces, the expires_at-only chunk (a finish chunk optionally on either side), optional usage."""
    for index, piece in enumerate(pieces):
        yield audio_data_chunk(ident, piece, audio_id if index == 0 else None)
    if finish_reason is not None and finish_before_expires:
        yield finish_chunk(ident, finish_reason)
    yield expires_chunk(ident, expires_at)
    if finish_reason is not None and not finish_before_expires:
        yield finish_chunk(ident, finish_reason)
    if usage is not None:
        yield usage_chunk(ident, usage)


def text_answer_chunks(ident: StreamIdentity, text: str, usage: Json | None = None) -> Iterator[Json]:
    """A whole text-only answer: role, content pieces, finish_reason stop, optional usage."""
    yield text_role_chunk(ident)
    for piece in transcript_pieces(text):
        yield content_chunk(ident, piece)
    yield finish_chunk(ident, "stop")
    if usage is not None:
        yield usage_chunk(ident, usage)


def audio_bytes_in(body: Json) -> int:
    """How many pcm16 bytes a chunk's `audio.data` carries (0 if none), without decoding it."""
    choices = body.get("choices") or [{}]
    data = (choices[0].get("delta") or {}).get("audio", {}).get("data", "")
    if not isinstance(data, str):
        return 0
    return len(data) // 4 * 3 - data[-2:].count("=")


def completion_body(
    ident: StreamIdentity, message: Json, usage: Json | None, finish_reason: str = "stop"
) -> Json:
    """A whole non-streaming `chat.completion`."""
    return {
        "id": ident.id,
        "object": "chat.completion",
        "created": ident.created,
        "model": ident.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": ident.system_fingerprint,
    }


def audio_message(audio_id: str, data: bytes, expires_at: int, transcript: str) -> Json:
    """The assistant message of a non-streamed spoken answer; `data` is the whole file."""
    audio = {
        "id": audio_id,
        "data": base64.b64encode(data).decode("ascii"),
        "expires_at": expires_at,
        "transcript": transcript,
    }
    return {"role": "assistant", "content": None, "refusal": None, "audio": audio, "annotations": []}


def text_message(text: str) -> Json:
    """The assistant message of a non-streamed text-only answer."""
    return {"role": "assistant", "content": text, "refusal": None, "annotations": []}


def sse_event(body: Json) -> bytes:
    """Encode one chunk (or error frame) as a server-sent event."""
    return b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
