"""Builders for the Realtime API's server events (GA names and shapes, as the openai SDK types them).

Pure functions of their arguments (plus fresh random ids where asked): the offline voice's Realtime face
assembles its sessions from these, and tests read the same shapes back through the SDK's models
(`openai.types.realtime`).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from service.offline.chat_request import text_tokens

Json = dict[str, Any]

# Generous constant limits: the offline voice never rate-limits, but clients read this event.
RATE_LIMITS: tuple[Json, ...] = (
    {"name": "requests", "limit": 10_000, "remaining": 9_999, "reset_seconds": 0.006},
    {"name": "tokens", "limit": 30_000_000, "remaining": 29_999_000, "reset_seconds": 0.002},
)


def new_id(prefix: str) -> str:
    """A fresh id like OpenAI's Realtime ids: `prefix` + "_" + 21 random url-safe characters."""
    return f"{prefix}_{secrets.token_urlsafe(16)[:21]}"


def event(type_: str, **fields: Any) -> Json:
    """One server event: its `type`, a fresh `event_id`, then `fields`."""
    return {"type": type_, "event_id": new_id("event"), **fields}


def error_event(
    message: str,
    code: str | None = None,
    param: str | None = None,
    client_event_id: str | None = None,
    type_: str = "invalid_request_error",
) -> Json:
    """The `error` event; `client_event_id` names the client event that caused it (None if none did)."""
    error = {"type": type_, "code": code, "message": message, "param": param, "event_id": client_event_id}
    return event("error", error=error)


def audio_format_json(rate: int = 24_000) -> Json:
    """The one format the offline voice speaks and hears: 24 kHz mono little-endian pcm16."""
    return {"type": "audio/pcm", "rate": rate}


def usage_json(input_text: int, input_audio: int, output_text: int, output_audio: int) -> Json:
    """A response's `usage`, its totals the sums of their parts (nothing cached offline)."""
    return {
        "total_tokens": input_text + input_audio + output_text + output_audio,
        "input_tokens": input_text + input_audio,
        "output_tokens": output_text + output_audio,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def pcm_ms(pcm_bytes: int) -> int:
    """Whole milliseconds of 24 kHz mono pcm16 in `pcm_bytes` (rounded down)."""
    return pcm_bytes // 48


def audio_tokens_for_ms(ms: int) -> int:
    """Ten audio tokens per second of speech, as the Chat Completions face counts them."""
    return math.ceil(ms / 100)


def output_text_tokens(text: str) -> int:
    """The text tokens of an answer (or of a transcript)."""
    return text_tokens(text)


def message_item(item_id: str, status: str, content: list[Json]) -> Json:
    """An assistant message item."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> Json:
    """A function call item the model made."""
    return {
        "id": item_id,
        "type": "function_call",
        "object": "realtime.item",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


def response_json(
    response_id: str,
    conversation_id: str | None,
    status: str,
    modalities: list[str],
    voice: Any,
    max_output_tokens: int | str,
    output: list[Json],
    usage: Json | None = None,
    status_details: Json | None = None,
    metadata: Json | None = None,
) -> Json:
    """A `realtime.response` object as response.created and response.done carry it."""
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": modalities,
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": audio_format_json(), "voice": voice}},
        "usage": usage,
        "metadata": metadata,
    }


def part_fields(response_id: str, item_id: str, output_index: int) -> Json:
    """The fields every content-part event of one item repeats (content index 0: one part per item)."""
    return {"response_id": response_id, "item_id": item_id, "output_index": output_index, "content_index": 0}
