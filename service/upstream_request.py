"""Builds the Chat Completions request for one turn from its settings, history and input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.tool_input import ToolEntry
from service.turn_input import AssistantEntry, Entry, TurnSettings, UserEntry

# An audio id this close to its expiry is not worth the risk of a 400 audio_not_found.
AUDIO_ID_SAFETY_MARGIN_SECONDS = 30


def build_params(
    settings: TurnSettings,
    history: Sequence[Entry],
    user: UserEntry,
    *,
    now: float,
    use_audio_ids: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for this turn, always streamed.

    An empty `user` (no text, no audio) continues the answer after the history's tool results.
    """
    messages: list[dict[str, Any]] = []
    if settings.instructions:
        messages.append({"role": "system", "content": settings.instructions})
    for entry in history:
        if isinstance(entry, UserEntry):
            messages.append(user_message(entry))
        elif isinstance(entry, ToolEntry):
            messages.append({"role": "tool", "tool_call_id": entry.tool_call_id, "content": entry.content})
        else:
            messages.append(assistant_message(entry, now=now, use_audio_ids=use_audio_ids))
    if user.text or user.audio is not None:
        messages.append(user_message(user))
    params: dict[str, Any] = {
        "model": settings.model,
        "modalities": list(settings.modalities),
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if settings.speaks:
        # Custom voices are objects; named ones are strings. Neither is checked against a list.
        voice: Any = {"id": settings.voice} if settings.voice.startswith("voice_") else settings.voice
        params["audio"] = {"voice": voice, "format": "pcm16"}
    if settings.max_output_tokens is not None:
        params["max_completion_tokens"] = settings.max_output_tokens
    if settings.temperature is not None:
        params["temperature"] = settings.temperature
    params.update(settings.tools)
    if settings.extra_body:
        # The SDK merges extra_body into the JSON body untouched: values go out as the client wrote them.
        params["extra_body"] = dict(settings.extra_body)
    return params


def user_message(entry: UserEntry) -> dict[str, Any]:
    """A user message; plain text stays a string for the widest compatibility."""
    if entry.audio is None:
        return {"role": "user", "content": entry.text}
    parts: list[dict[str, Any]] = []
    if entry.text:
        parts.append({"type": "text", "text": entry.text})
    parts.append(
        {"type": "input_audio", "input_audio": {"data": entry.audio.data_b64, "format": entry.audio.format}}
    )
    return {"role": "user", "content": parts}


def assistant_message(entry: AssistantEntry, *, now: float, use_audio_ids: bool) -> dict[str, Any]:
    """An earlier answer by audio id while the id lives, else by its transcript; with the tools it called."""
    id_alive = entry.audio_expires_at == 0 or entry.audio_expires_at - now > AUDIO_ID_SAFETY_MARGIN_SECONDS
    message: dict[str, Any]
    if use_audio_ids and entry.audio_id and id_alive:
        message = {"role": "assistant", "audio": {"id": entry.audio_id}}
    else:
        # A call without a spoken preamble has no text: null content, as the upstream itself writes it.
        message = {"role": "assistant", "content": entry.text or (None if entry.tool_calls else "")}
    if entry.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in entry.tool_calls
        ]
    return message


def refers_to_audio_ids(history: Sequence[Entry]) -> bool:
    """Whether a request built from this history may carry audio ids."""
    return any(isinstance(entry, AssistantEntry) and entry.audio_id for entry in history)
