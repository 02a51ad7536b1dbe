"""One declared schema per edge message (pydantic v2): the SSE turn body, each WebSocket message, the
OpenAI-compatible body's typed parameters. Input is checked here, before anything reads it, so a whole
class of bad input (wrong types, non-finite or out-of-range numbers, lone surrogates, non-ASCII base64)
gets one clear 400 / close 1007 naming the field instead of a crash deep inside. The translators
(turn_request, compat_request, websocket) then read values whose types are known.

Every field a translator reads is declared here; a field that is not is refused by name (nothing a client
sends is dropped without a word). Fields whose shape a translator checks itself (tools, turn detection,
output audio) are declared as `Any`. Two exceptions: the OpenAI-compatible body's top level forwards what it
does not know to the upstream, and an unknown field sent as null or empty carries nothing to lose (SDKs echo
`"refusal": null` or `"annotations": []` in an assistant message), so it passes.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.status import EdgeError, bad_request
from service.pass_through import json_problem

UINT32_MAX = 2**32 - 1
# Nesting deeper than this is no message of ours; the limit keeps parsing off Python's recursion limit.
MAX_JSON_DEPTH = 64


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate, which is not valid Unicode") from None
    return value


def _base64_text(value: str) -> str:
    if not value.isascii():
        raise ValueError("must be base64 (ASCII letters, digits, +, / and =)")
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(_unicode)]
Flag = Annotated[bool, Field(strict=True)]
Base64 = Annotated[str, Field(strict=True), AfterValidator(_base64_text)]
Count = Annotated[int, Field(strict=True, ge=0, le=UINT32_MAX)]
PositiveCount = Annotated[int, Field(strict=True, ge=1, le=UINT32_MAX)]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
Timestamp = Annotated[int, Field(strict=True, ge=0, le=2**62)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_unknown_fields_pass(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields or v not in (None, [], {})}
        return data


class AudioBody(_Message):
    """`{"data": base64, "format": "wav"|"mp3"|"pcm16"|..., "sample_rate_hz": N}`."""

    data: Base64 = ""
    format: Text | None = None
    sample_rate_hz: Count | None = None


class HistoryEntry(_Message):
    """One earlier message: `{"role": "user", "text", "audio"}` or `{"role": "assistant", "text", "audio_id",
    "audio_expires_at"}`."""

    role: Text
    text: Text | None = None
    audio: AudioBody | None = None
    audio_id: Text | None = None
    audio_expires_at: Timestamp | None = None
    tool_calls: Any = None
    tool_call_id: Any = None
    content: Any = None


class TurnSettingsBody(_Message):
    """The settings of a turn, shared by the SSE body and the WebSocket `config` message."""

    model: Text | None = None
    voice: Text | None = None
    instructions: Text | None = None
    modalities: list[Text] | Text | None = None
    max_output_tokens: PositiveCount | None = None
    temperature: Number | None = None
    history: list[HistoryEntry] | None = None
    extra_body: dict[str, Any] | Text | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    output_audio: Any = None


class TurnBody(TurnSettingsBody):
    """`POST /v1/turns` as JSON."""

    text: Text | None = None
    audio: AudioBody | None = None


class InputAudioFormat(_Message):
    """`{"encoding": "pcm16"|"wav"|"mp3", "sample_rate_hz": N}` for the WebSocket's binary audio frames."""

    encoding: Text | None = None
    sample_rate_hz: Count | None = None


class ConfigMessage(TurnSettingsBody):
    """WebSocket `config`: the conversation's settings and history."""

    type: Literal["config"]
    input_audio: InputAudioFormat | None = None
    turn_detection: Any = None
    # ms an answer outlives a dropped socket for a `resume` (ConverseConfig.resume_grace_ms); 0: none.
    resume_grace_ms: Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)] | None = None


class ResumeMessage(_Message):
    """WebSocket `resume`: continue a conversation (instead of `config`) after the last event seen."""

    type: Literal["resume"]
    conversation_id: Text
    turn_id: Text | None = None
    sequence: Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)] = 0
    input_audio: InputAudioFormat | None = None


class TextMessage(_Message):
    """WebSocket `text`: a typed turn."""

    type: Literal["text"]
    text: Text = ""


class CommitMessage(_Message):
    """WebSocket `commit`: send the recording (with optional text)."""

    type: Literal["commit"]
    text: Text = ""


class InterruptMessage(_Message):
    """WebSocket `interrupt`: stop the answer; how much of it was heard."""

    type: Literal["interrupt"]
    played_ms: Count = 0


class AudioStartMessage(InputAudioFormat):
    """WebSocket `audio.start`: the format of the binary frames that follow."""

    type: Literal["audio.start"]


class ToolResultMessage(_Message):
    """WebSocket `tool_result`: what the client's function returned for one call."""

    type: Literal["tool_result"]
    tool_call_id: Text | None = None
    content: Text = ""


class BareMessage(_Message):
    """WebSocket messages with no fields of their own (`clear_audio`, `auth`)."""

    type: Literal["clear_audio", "auth"]
    token: Text | None = None


WEBSOCKET_MESSAGES: dict[str, type[_Message]] = {
    "config": ConfigMessage,
    "resume": ResumeMessage,
    "text": TextMessage,
    "commit": CommitMessage,
    "interrupt": InterruptMessage,
    "audio.start": AudioStartMessage,
    "clear_audio": BareMessage,
    "auth": BareMessage,
    "tool_result": ToolResultMessage,
}


class InputAudioPart(_Message):
    """`{"data": base64, "format": "wav"|"mp3"}`."""

    data: Base64 = ""
    format: Text | None = None


class ContentPart(_Message):
    """A part of a message's content: `{"type": "text", "text"}` or `{"type": "input_audio", ...}`."""

    type: Text
    text: Text | None = None
    input_audio: InputAudioPart | None = None


class AudioReference(_Message):
    """An assistant message's `audio`: `{"id": "audio_..."}`."""

    id: Text | None = None


class AudioParam(_Message):
    """`audio`: `{"voice": "alloy" | {"id": "voice_..."}, "format": "pcm16"|"wav"|...}`."""

    voice: Text | dict[str, Text] | None = None
    format: Text | None = None


class ChatMessage(_Message):
    """One entry of `messages`."""

    role: Text
    content: Text | list[ContentPart] | None = None
    audio: AudioReference | None = None
    tool_calls: Any = None
    tool_call_id: Any = None


class ChatCompletionBody(_Message):
    """`POST /v1/chat/completions`: the parameters the route reads itself; everything else is forwarded."""

    model_config = ConfigDict(extra="allow", strict=False)

    model: Text
    messages: list[ChatMessage]
    stream: Flag | None = None
    modalities: list[Text] | None = None
    audio: AudioParam | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: PositiveCount | None = None
    max_completion_tokens: PositiveCount | None = None
    temperature: Number | None = None


class SchemaError(Exception):
    """The message does not fit its schema; `error` answers 400 / close 1007 naming the field."""

    def __init__(self, error: EdgeError) -> None:
        super().__init__(error.message)
        self.error = error


def parse_json(text: str | bytes) -> Any:
    """JSON as our messages may hold it; SchemaError naming the field for NaN or Infinity, lone surrogates,
    and nesting past MAX_JSON_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise SchemaError(bad_request(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")) from None
    except json.JSONDecodeError as exc:
        raise SchemaError(bad_request(f"the body is not valid JSON: {exc}")) from None
    except ValueError:  # int() past Python's digit limit, or bytes that are not UTF-8
        raise SchemaError(
            bad_request("the body is not valid JSON: bad UTF-8, or a number with too many digits")
        ) from None
    problem = json_problem(value, "", MAX_JSON_DEPTH - 1)
    if problem is not None:
        _refuse(*problem)
    return value


def _refuse(path: str, why: str) -> NoReturn:
    message = f"'{path}' {why}" if path else f"the JSON {why}"
    raise SchemaError(replace(bad_request(message), param=path or None))


def validate(schema: type[_Message], value: Any) -> Any:
    """`value` checked against `schema`; SchemaError naming the first field at fault."""
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        # Of a union's errors, the deepest names the field at fault (not "content is not a string").
        first = max(exc.errors(include_url=False, include_input=False), key=lambda error: len(error["loc"]))
        field = field_path(first["loc"])
        if first["type"] == "extra_forbidden":
            hint = "" if schema is ChatCompletionBody else "; upstream parameters go in extra_body"
            message = f"'{field}' is not a field audiochat knows here, so it would not reach the model{hint}"
        else:
            # pydantic names our classes ("... or instance of HistoryEntry"): not the client's vocabulary.
            why = _CLASS_NAME.sub("", str(first["msg"]))
            message = f"'{field}': {why}" if field else why
        raise SchemaError(replace(bad_request(message), param=field or None)) from None


_CLASS_NAME = re.compile(r" or instance of \w+")
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "json"})


def field_path(location: tuple[int | str, ...]) -> str:
    """`("history", 0, "audio", "data")` as `history[0].audio.data`, the way OpenAI names params."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.replace("_", "").isalnum() and part not in _UNION_TAGS:
            path += f".{part}" if path else part  # skip union tags such as `list[str]`
    return path
