"""An OpenAI Chat Completions request, as the official SDKs send it for audio chat, as a StreamTurnRequest."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from adapters.schemas import ChatCompletionBody, SchemaError, validate
from adapters.status import EdgeError
from adapters.tool_json import ToolJsonError, set_tools, tool_calls, tool_result
from adapters.turn_request import ENCODINGS, OUTPUT_ENCODINGS
from audiochat.v1 import audiochat_pb2 as pb
from service.pass_through import Refused, check_json, check_params

# The gateway streams pcm16 from the model and encodes the answer itself, streamed or not, into any of these
# (the model alone would refuse all but pcm16 while streaming).
ENCODED_FORMATS = ("pcm16", "wav", "opus", "mp3", "aac", "flac")
# Besides OpenAI's wav and mp3, what phones and browsers record; the core recognises the bytes and decodes.
_INPUT_FORMATS = {name: value for name, value in ENCODINGS.items() if name != "pcm16"}
# Parts of the body this route turns into typed fields; every other parameter goes to the upstream as written.
_BUILT_HERE = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "modalities",
        "audio",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
# The gateway writes its own chunks: they never carry the `obfuscation` padding, whatever the client asks.
_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})


class CompatError(Exception):
    """A request OpenAI would refuse too; answered in its error shape."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.error = EdgeError(400, code or "invalid_request_error", message, 1007)
        self.param = param


@dataclass(frozen=True, slots=True)
class CompatRequest:
    """What answering the request needs."""

    turn: pb.StreamTurnRequest
    model: str
    stream: bool
    include_usage: bool
    wants_audio: bool
    audio_format: str


def parse(body: Any) -> CompatRequest:
    """Check the body's shape and build the turn: system messages become instructions, the last user message
    the input, everything before it the history (a history ending with tool results continues after them)."""
    if not isinstance(body, dict):
        raise CompatError("Invalid type for request body: expected an object.", None, "invalid_type")
    try:
        validate(ChatCompletionBody, body)
    except SchemaError as exc:
        raise CompatError(exc.error.message, exc.error.param, "invalid_value") from None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise CompatError("you must provide a model parameter", "model", "missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise CompatError("'messages' must be a non-empty array.", "messages", "invalid_value")
    stream = body.get("stream") is True
    include_usage = _stream_options(body.get("stream_options"), stream)
    wants_audio, voice, audio_format = _output(body)
    config = pb.TurnConfig(
        model=model,
        voice=voice,
        modalities=[pb.MODALITY_TEXT, pb.MODALITY_AUDIO] if wants_audio else [pb.MODALITY_TEXT],
    )
    config.extra_body = _extra_body(body)
    try:
        set_tools(config, body)
    except ToolJsonError as exc:
        raise CompatError(str(exc), exc.param) from None
    # A whole wav is made at the end from the pcm16, with its real sizes; a streamed one has "unknown" sizes.
    whole_wav = audio_format == "wav" and not stream
    if wants_audio and audio_format != "pcm16" and not whole_wav:
        config.output_audio_format.encoding = OUTPUT_ENCODINGS[audio_format]
    turn = _messages(messages, config)
    return CompatRequest(
        turn=turn,
        model=model,
        stream=stream,
        include_usage=include_usage,
        wants_audio=wants_audio,
        audio_format=audio_format,
    )


def _extra_body(body: dict[str, Any]) -> str:
    """Every parameter this route does not build itself, as written, for the upstream; or a 400 naming it."""
    extra = {name: value for name, value in body.items() if name not in _BUILT_HERE}
    try:
        check_params(extra, "")
        check_json(extra, "")
    except Refused as exc:
        raise CompatError(exc.message, exc.param.lstrip("."), "unsupported_parameter") from None
    return json.dumps(extra, allow_nan=False) if extra else ""


def _stream_options(options: Any, stream: bool) -> bool:
    """Whether the client wants the usage chunk. The gateway owns stream_options upstream (it always asks
    for usage), so only the options it honours itself are accepted."""
    if options is None:
        return False
    if not stream:
        raise CompatError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if not isinstance(options, dict):
        raise CompatError("'stream_options' must be an object.", "stream_options", "invalid_type")
    for name, value in options.items():
        if name not in _STREAM_OPTIONS:
            raise CompatError(
                f"Unsupported parameter: 'stream_options.{name}' is not supported by this gateway.",
                f"stream_options.{name}",
                "unsupported_parameter",
            )
        if not isinstance(value, bool):
            raise CompatError(
                f"'stream_options.{name}' must be a boolean.", f"stream_options.{name}", "invalid_type"
            )
    return options.get("include_usage") is True


def _output(body: dict[str, Any]) -> tuple[bool, str, str]:
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or any(item not in ("text", "audio") for item in modalities):
        raise CompatError("'modalities' must be a list of 'text' and 'audio'.", "modalities")
    if "audio" not in modalities:
        return False, "", ""
    audio = body.get("audio")
    if not isinstance(audio, dict):
        raise CompatError("Missing required parameter: 'audio'.", "audio", "missing_required_parameter")
    voice = audio.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")  # custom voices are {"id": "voice_..."}
    if not isinstance(voice, str) or not voice:
        raise CompatError(
            "Missing required parameter: 'audio.voice'.", "audio.voice", "missing_required_parameter"
        )
    audio_format = audio.get("format")
    if audio_format not in ENCODED_FORMATS:
        supported = ", ".join(f"'{name}'" for name in ENCODED_FORMATS)
        raise CompatError(
            f"Unsupported value: 'audio.format' does not support '{audio_format}'."
            f" Supported values are: {supported}.",
            "audio.format",
            "unsupported_value",
        )
    return True, voice, str(audio_format)


def _messages(messages: list[Any], config: pb.TurnConfig) -> pb.StreamTurnRequest:
    instructions: list[str] = []
    items: list[pb.HistoryItem] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            instructions.append(_content(message.get("content"), index)[0])
        elif role == "user":
            text, audio = _content(message.get("content"), index)
            user = pb.UserMessage(text=text)
            if audio is not None:
                user.audio.CopyFrom(audio)
            items.append(pb.HistoryItem(user=user))
        elif role == "assistant":
            text, _ = _content(message.get("content"), index)
            reference = message.get("audio")
            audio_id = reference.get("id") if isinstance(reference, dict) else None
            if reference is not None and not isinstance(audio_id, str):
                raise CompatError("Missing required parameter: 'audio.id'.", f"messages[{index}].audio.id")
            assistant = pb.AssistantMessage(text=text, audio_id=audio_id or "")
            if message.get("tool_calls") is not None:
                try:
                    assistant.tool_calls.extend(
                        tool_calls(message["tool_calls"], f"messages[{index}].tool_calls")
                    )
                except ToolJsonError as exc:
                    raise CompatError(str(exc), exc.param) from None
            items.append(pb.HistoryItem(assistant=assistant))
        elif role == "tool":
            text, audio = _content(message.get("content"), index)
            if audio is not None:
                raise CompatError("A tool message holds text only.", f"messages[{index}].content")
            try:
                items.append(pb.HistoryItem(tool_result=tool_result(message, f"messages[{index}]", text)))
            except ToolJsonError as exc:
                raise CompatError(str(exc), exc.param) from None
        else:
            raise CompatError(
                f"Unsupported role {role!r}: use system, developer, user, assistant or tool.",
                f"messages[{index}].role",
            )
    config.instructions = "\n\n".join(part for part in instructions if part)
    if items and items[-1].HasField("tool_result"):
        return pb.StreamTurnRequest(config=config, history=items)  # the answer continues after the results
    if not items or not items[-1].HasField("user"):
        raise CompatError(
            "The last message must be the user's or a tool's.", f"messages[{len(messages) - 1}].role"
        )
    return pb.StreamTurnRequest(config=config, history=items[:-1], input=items[-1].user)


def _content(content: Any, index: int) -> tuple[str, pb.AudioInput | None]:
    """A message's text and its input audio (one part at most)."""
    if content is None or isinstance(content, str):
        return content or "", None
    if not isinstance(content, list):
        raise CompatError(
            "'content' must be a string or an array.", f"messages[{index}].content", "invalid_type"
        )
    texts: list[str] = []
    audio: pb.AudioInput | None = None
    for part_index, part in enumerate(content):
        param = f"messages[{index}].content[{part_index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "input_audio":
            if audio is not None:
                raise CompatError("One input_audio part per message is supported.", param)
            audio = _input_audio(part.get("input_audio"), param)
        else:
            raise CompatError(
                f"Unsupported content part type {kind!r}: use text or input_audio.", f"{param}.type"
            )
    return " ".join(texts), audio


def _input_audio(value: Any, param: str) -> pb.AudioInput:
    if not isinstance(value, dict) or value.get("format") not in _INPUT_FORMATS:
        raise CompatError(
            f"'input_audio.format' must be one of {', '.join(_INPUT_FORMATS)}.", f"{param}.input_audio.format"
        )
    try:
        data = base64.b64decode(str(value.get("data", "")), validate=True)
    except binascii.Error:
        raise CompatError("'input_audio.data' must be base64.", f"{param}.input_audio.data") from None
    return pb.AudioInput(data=data, format=pb.AudioFormat(encoding=_INPUT_FORMATS[value["format"]]))
