"""The Realtime API mapping, both ways, in one module. Pure: no I/O.

audiochat builds one request shape for every upstream, the Chat Completions request of a turn
(`service.upstream_request.build_params`), and folds one stream shape, Chat Completions chunks
(`service.normalizer`). The Realtime upstream is an adapter between those shapes and the Realtime API's
events, so the normalizer, its guarantees (whole samples, `start_sample`, finish reasons, typed errors)
and everything above it are the same whichever upstream answered:

- out: `session_config` turns the request's settings into the `session.update` session (instructions,
  output modalities, voice, output format, tools, tool choice, max output tokens); `conversation_items`
  turns its messages into `conversation.item.create` items (earlier answers as text: a Chat Completions
  audio id means nothing to the Realtime API). What the Realtime API has no place for is refused by name
  (`Unsupported`), never dropped;
- in: `EventTranslator` turns the server's events into the chunks the normalizer folds
  (`response.output_audio.delta` -> `delta.audio.data`, `response.output_audio_transcript.delta` ->
  `delta.audio.transcript`, `response.output_text.delta` -> `delta.content`, function-call items and
  argument deltas -> `delta.tool_calls`, `response.done` -> `finish_reason` and `usage`, `error` -> an
  `{"error": ...}` frame).

Event names and shapes are the GA ones of the official SDK's `openai.types.realtime`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE_HZ = 24_000
BYTES_PER_SAMPLE = 2
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}

# Request keys the mapping knows; any other key of the request is refused by name (nothing dropped).
_HANDLED = frozenset(
    {
        "model",
        "modalities",
        "messages",
        "stream",
        "stream_options",
        "audio",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
# Request keys the Realtime API has no place for, and the contract field a client set to get them.
_CONTRACT_FIELDS = {"temperature": "config.temperature", "extra_body": "config.extra_body"}


class Unsupported(ValueError):
    """Part of a request the Realtime API cannot carry; `field` names it in the contract's terms."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


# Turns a user recording (base64 of a wav or mp3 file, and its format name) into base64 24 kHz mono
# pcm16, the Realtime session's input format. Given by the caller: decoding is not this module's business.
AudioToPcm = Callable[[str, str], str]


def session_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The `session` of a `session.update` for this Chat Completions request.

    Raises Unsupported for request fields the Realtime API has no place for (`temperature`, `extra_body`,
    any other key this module does not know).
    """
    for key in params:
        if key not in _HANDLED:
            where = _CONTRACT_FIELDS.get(key, key)
            what = ", ".join(sorted(params[key])) if key == "extra_body" else key
            raise Unsupported(
                f"{where}: the Realtime upstream has no place for {what}; leave it out or use a Chat "
                "Completions model",
                where,
            )
    modalities = list(params.get("modalities") or ["text"])
    session: dict[str, Any] = {
        "type": "realtime",
        # The Realtime API speaks with a transcript, or writes text: never both as separate outputs.
        "output_modalities": ["audio"] if "audio" in modalities else ["text"],
        "audio": {"input": {"format": PCM_FORMAT, "turn_detection": None}},
    }
    instructions = _instructions(params.get("messages") or [])
    if instructions:
        session["instructions"] = instructions
    audio = params.get("audio")
    if isinstance(audio, Mapping):
        output: dict[str, Any] = {"format": PCM_FORMAT}
        if audio.get("voice"):
            output["voice"] = audio["voice"]
        session["audio"]["output"] = output
    if params.get("max_completion_tokens") is not None:
        session["max_output_tokens"] = params["max_completion_tokens"]
    tools = params.get("tools")
    if tools:
        session["tools"] = [_tool(tool) for tool in tools]
    choice = params.get("tool_choice")
    if isinstance(choice, Mapping):
        session["tool_choice"] = {"type": "function", "name": choice["function"]["name"]}
    elif choice is not None:
        session["tool_choice"] = choice
    if params.get("parallel_tool_calls") is not None:
        session["parallel_tool_calls"] = params["parallel_tool_calls"]
    return session


def _instructions(messages: Sequence[Mapping[str, Any]]) -> str:
    if messages and messages[0].get("role") in ("system", "developer"):
        return str(messages[0].get("content") or "")
    return ""


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    spec: dict[str, Any] = {"type": "function", "name": function["name"]}
    for key in ("description", "parameters"):
        if key in function:
            spec[key] = function[key]
    return spec


def conversation_items(
    messages: Sequence[Mapping[str, Any]], audio_to_pcm: AudioToPcm
) -> list[dict[str, Any]]:
    """The `conversation.item.create` items for a request's messages (the leading system message is the
    session's instructions instead). Answers go as text; their calls as `function_call` items and tool
    results as `function_call_output` items."""
    items: list[dict[str, Any]] = []
    start = 1 if _instructions(messages) else 0
    for message in messages[start:]:
        role = message.get("role")
        if role == "user":
            items.append(_user_item(message.get("content"), audio_to_pcm))
        elif role in ("system", "developer"):
            text = str(message.get("content") or "")
            items.append(
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}
            )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": message.get("content") or "",
                }
            )
        elif role == "assistant":
            content = message.get("content")
            if content:
                items.append(
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": content}],
                    }
                )
            for call in message.get("tool_calls") or ():
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function.get("arguments") or "",
                    }
                )
    return items


def _user_item(content: object, audio_to_pcm: AudioToPcm) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append({"type": "input_text", "text": content})
    elif isinstance(content, Sequence):
        for part in content:
            if part.get("type") == "text":
                parts.append({"type": "input_text", "text": part["text"]})
            elif part.get("type") == "input_audio":
                audio = part["input_audio"]
                parts.append({"type": "input_audio", "audio": audio_to_pcm(audio["data"], audio["format"])})
    return {"type": "message", "role": "user", "content": parts}


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


@dataclass(slots=True)
class EventTranslator:
    """Realtime server events of one response in, Chat Completions chunks out (for the normalizer).

    `done` turns true at `response.done`; `audio_item_id` and `audio_bytes` say which item the answer's
    audio belongs to and how much of it arrived, for `conversation.item.truncate`.
    """

    done: bool = False
    response_id: str = ""
    audio_item_id: str = ""
    audio_bytes: int = 0
    status: str = ""
    _calls: dict[str, int] = field(default_factory=dict)

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks one server event carries, in order; events that carry nothing for the answer
        (session and item bookkeeping, content parts, rate limits) give none."""
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            delta = event.get("delta")
            if isinstance(delta, str):
                # base64 length to bytes, without decoding: the normalizer decodes (and checks) it.
                self.audio_bytes += len(delta) // 4 * 3 - delta[-2:].count("=")
            self.audio_item_id = str(event.get("item_id") or self.audio_item_id)
            return [_chunk({"audio": {"data": delta}})]
        if kind == "response.output_audio_transcript.delta":
            return [_chunk({"audio": {"transcript": event.get("delta")}})]
        if kind == "response.output_text.delta":
            return [_chunk({"content": event.get("delta")})]
        if kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, Mapping) and item.get("type") == "function_call":
                return [self._call_started(item)]
            return []
        if kind == "response.function_call_arguments.delta":
            call_id = str(event.get("call_id") or "")
            index = self._calls.get(call_id)
            if index is None:  # no output_item.added before it: the call starts here
                index = self._calls[call_id] = len(self._calls)
                piece = {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                }
                return [_chunk({"tool_calls": [piece]}), self._arguments(index, event.get("delta"))]
            return [self._arguments(index, event.get("delta"))]
        if kind == "response.created":
            response = event.get("response")
            if isinstance(response, Mapping):
                self.response_id = str(response.get("id") or "")
            return []
        if kind == "response.done":
            self.done = True
            response = event.get("response")
            return self._done(response if isinstance(response, Mapping) else {})
        if kind == "error":
            error = event.get("error")
            return [{"error": error if isinstance(error, Mapping) else {"message": str(error)}}]
        return []

    def call_ids(self) -> list[str]:
        """The ids of the answer's function calls, in call order."""
        return sorted(self._calls, key=self._calls.__getitem__)

    def _call_started(self, item: Mapping[str, Any]) -> dict[str, Any]:
        call_id = str(item.get("call_id") or "")
        index = self._calls.setdefault(call_id, len(self._calls))
        piece = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": item.get("name") or "", "arguments": ""},
        }
        return _chunk({"tool_calls": [piece]})

    @staticmethod
    def _arguments(index: int, delta: object) -> dict[str, Any]:
        return _chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})

    def _done(self, response: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.status = str(response.get("status") or "")
        details = response.get("status_details")
        details = details if isinstance(details, Mapping) else {}
        chunks: list[dict[str, Any]] = []
        if self.status == "failed":
            error = details.get("error")
            error = dict(error) if isinstance(error, Mapping) else {}
            error.setdefault("type", "server_error")
            error.setdefault("message", "the Realtime upstream failed the response")
            chunks.append({"error": error})
        else:
            chunks.append(_chunk({}, self._finish_reason(details)))
        usage = response.get("usage")
        if isinstance(usage, Mapping):
            chunks.append({"choices": [], "usage": usage_to_chat(usage)})
        return chunks

    def _finish_reason(self, details: Mapping[str, Any]) -> str:
        if self.status == "cancelled":
            return "interrupted"
        if self.status == "incomplete":
            return "content_filter" if details.get("reason") == "content_filter" else "length"
        return "tool_calls" if self._calls else "stop"


# Realtime usage keys -> Chat Completions usage keys (service.usage reads the latter).
_USAGE_KEYS = (
    ("input_tokens", "prompt_tokens"),
    ("output_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
)
_DETAIL_GROUPS = (
    (
        "input_token_details",
        "prompt_tokens_details",
        ("cached_tokens", "audio_tokens", "text_tokens", "image_tokens"),
    ),
    ("output_token_details", "completion_tokens_details", ("audio_tokens", "text_tokens")),
)


def usage_to_chat(usage: Mapping[str, Any]) -> dict[str, Any]:
    """A `response.done` usage in Chat Completions' keys; counts it did not send stay absent."""
    return _rename_usage(usage, to_chat=True)


def usage_to_realtime(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `usage_to_chat` (a Chat Completions usage as a `response.done` one)."""
    return _rename_usage(usage, to_chat=False)


def _rename_usage(usage: Mapping[str, Any], *, to_chat: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for realtime_key, chat_key in _USAGE_KEYS:
        source, target = (realtime_key, chat_key) if to_chat else (chat_key, realtime_key)
        if source in usage:
            result[target] = usage[source]
    for realtime_group, chat_group, keys in _DETAIL_GROUPS:
        source, target = (realtime_group, chat_group) if to_chat else (chat_group, realtime_group)
        details = usage.get(source)
        if isinstance(details, Mapping):
            result[target] = {key: details[key] for key in keys if key in details}
    return result
