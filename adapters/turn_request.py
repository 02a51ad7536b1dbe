"""The body of `POST /v1/turns` (JSON, or multipart with a recorded file) as a StreamTurnRequest.

Only the shape is checked here; what the values mean (formats, durations, limits) is the core's to judge,
so a bad recording gets the same message whichever edge it came through.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.datastructures import FormData, UploadFile

from adapters.schemas import SchemaError, TurnBody, parse_json, validate
from adapters.status import EdgeError, bad_request
from adapters.tool_json import ToolJsonError, set_tools, tool_calls, tool_result
from audiochat.v1 import audiochat_pb2 as pb

# Input encodings by name. Files are recognised by the core from their bytes, so for anything but raw pcm16
# the name is only a label; it may be left out.
ENCODINGS = {
    "pcm16": pb.AUDIO_ENCODING_PCM16,
    "wav": pb.AUDIO_ENCODING_WAV,
    "mp3": pb.AUDIO_ENCODING_MP3,
    "m4a": pb.AUDIO_ENCODING_M4A,
    "mp4": pb.AUDIO_ENCODING_M4A,
    "aac": pb.AUDIO_ENCODING_AAC,
    "webm": pb.AUDIO_ENCODING_WEBM_OPUS,
    "webm_opus": pb.AUDIO_ENCODING_WEBM_OPUS,
    "ogg": pb.AUDIO_ENCODING_OPUS,
    "opus": pb.AUDIO_ENCODING_OPUS,
    "vorbis": pb.AUDIO_ENCODING_VORBIS,
    "flac": pb.AUDIO_ENCODING_FLAC,
}
# Answer encodings by name (`output_audio`); the OpenAI names where OpenAI has one.
OUTPUT_ENCODINGS = {
    "pcm16": pb.AUDIO_ENCODING_PCM16,
    "wav": pb.AUDIO_ENCODING_WAV,
    "opus": pb.AUDIO_ENCODING_OPUS,
    "webm_opus": pb.AUDIO_ENCODING_WEBM_OPUS,
    "aac": pb.AUDIO_ENCODING_AAC,
    "mp3": pb.AUDIO_ENCODING_MP3,
    "flac": pb.AUDIO_ENCODING_FLAC,
}
MODALITIES = {"text": pb.MODALITY_TEXT, "audio": pb.MODALITY_AUDIO}


class RequestError(Exception):
    """The body's shape is wrong; `error` says how to answer."""

    def __init__(self, message: str, error: EdgeError | None = None) -> None:
        super().__init__(message)
        self.error: EdgeError = error or bad_request(message)


def checked(schema: type[Any], body: Any) -> None:
    """RequestError naming the field unless `body` fits its declared schema (adapters.schemas)."""
    try:
        validate(schema, body)
    except SchemaError as exc:
        raise RequestError(exc.error.message, exc.error) from None


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string")
    return value


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{key}' must be a number")
    return float(value)


def turn_config(body: dict[str, Any]) -> pb.TurnConfig:
    """model, voice, instructions, modalities, max_output_tokens, temperature, output_audio."""
    modalities = body.get("modalities") or []
    if isinstance(modalities, str):
        modalities = [part.strip() for part in modalities.split(",") if part.strip()]
    if not isinstance(modalities, list) or any(item not in MODALITIES for item in modalities):
        raise RequestError('\'modalities\' must be a list of "text" and "audio"')
    config = pb.TurnConfig(
        model=_str(body, "model"),
        voice=_str(body, "voice"),
        instructions=_str(body, "instructions"),
        modalities=[MODALITIES[item] for item in modalities],
    )
    max_tokens = _number(body, "max_output_tokens")
    if max_tokens is not None:
        if max_tokens != int(max_tokens) or not 0 < max_tokens < 2**32:
            raise RequestError("'max_output_tokens' must be a positive integer")
        config.max_output_tokens = int(max_tokens)
    temperature = _number(body, "temperature")
    if temperature is not None:
        config.temperature = temperature
    config.extra_body = extra_body(body.get("extra_body"))
    try:
        set_tools(config, body)
    except ToolJsonError as exc:
        raise RequestError(str(exc)) from None
    if body.get("output_audio") is not None:
        config.output_audio_format.CopyFrom(output_audio(body["output_audio"]))
    return config


def extra_body(value: Any) -> str:
    """`extra_body`: extra upstream parameters as a JSON object (or its text, from a form field), kept as
    JSON text for TurnConfig.extra_body; the core decides what passes (service.pass_through)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise RequestError("'extra_body' must be a JSON object of upstream parameters")
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise RequestError("'extra_body' must hold finite numbers only") from None


def output_audio(value: Any) -> pb.AudioFormat:
    """`"opus"` or `{"format": "opus", "bitrate_bps": 24000}` as the answer's AudioFormat."""
    if isinstance(value, str):
        value = {"format": value}
    if not isinstance(value, dict):
        raise RequestError("'output_audio' must be a format name or {format, bitrate_bps}")
    name = value.get("format", "pcm16")
    if name not in OUTPUT_ENCODINGS:
        raise RequestError(
            f"'output_audio.format' must be one of {', '.join(OUTPUT_ENCODINGS)}, not {name!r}"
        )
    bitrate = _number(value, "bitrate_bps") or 0
    if bitrate != int(bitrate) or not 0 <= bitrate < 2**32:
        raise RequestError("'output_audio.bitrate_bps' must be a positive integer")
    return pb.AudioFormat(encoding=OUTPUT_ENCODINGS[name], bitrate_bps=int(bitrate))


def audio_input(value: Any) -> pb.AudioInput:
    """{"data": base64, "format"?: a name of ENCODINGS, "sample_rate_hz": N (pcm16 only)} as an AudioInput."""
    if not isinstance(value, dict):
        raise RequestError("'audio' must be an object {data, format, sample_rate_hz}")
    try:
        data = base64.b64decode(_str(value, "data"), validate=True)
    except binascii.Error:
        raise RequestError("'audio.data' must be base64") from None
    name = _str(value, "format")
    encoding = ENCODINGS.get(name) if name else pb.AUDIO_ENCODING_UNSPECIFIED
    if encoding is None:
        raise RequestError(f"'audio.format' must be one of {', '.join(ENCODINGS)}, not {name!r}")
    rate = _number(value, "sample_rate_hz") or 0
    return pb.AudioInput(data=data, format=pb.AudioFormat(encoding=encoding, sample_rate_hz=int(rate)))


def user_message(body: dict[str, Any]) -> pb.UserMessage:
    """{"text", "audio"} as a UserMessage."""
    message = pb.UserMessage(text=_str(body, "text"))
    if body.get("audio") is not None:
        message.audio.CopyFrom(audio_input(body["audio"]))
    return message


def history(items: Any) -> list[pb.HistoryItem]:
    """[{"role": "user", "text", "audio"} | {"role": "assistant", "text", "audio_id", "audio_expires_at",
    "tool_calls"} | {"role": "tool", "tool_call_id", "content"}]."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise RequestError("'history' must be a list of messages")
    result: list[pb.HistoryItem] = []
    for index, item in enumerate(items):
        role = item.get("role") if isinstance(item, dict) else None
        try:
            if role == "user":
                result.append(pb.HistoryItem(user=user_message(item)))
            elif role == "assistant":
                expires = _number(item, "audio_expires_at") or 0
                assistant = pb.AssistantMessage(
                    text=_str(item, "text"), audio_id=_str(item, "audio_id"), audio_expires_at=int(expires)
                )
                if item.get("tool_calls") is not None:
                    assistant.tool_calls.extend(
                        tool_calls(item["tool_calls"], f"history[{index}].tool_calls")
                    )
                result.append(pb.HistoryItem(assistant=assistant))
            elif role == "tool":
                content = _str(item, "content")
                result.append(pb.HistoryItem(tool_result=tool_result(item, f"history[{index}]", content)))
            else:
                raise RequestError('each history item needs a role: "user", "assistant" or "tool"')
        except ToolJsonError as exc:
            raise RequestError(str(exc)) from None
    return result


def from_json(body: Any) -> pb.StreamTurnRequest:
    """The JSON form of a turn."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    checked(TurnBody, body)
    return pb.StreamTurnRequest(
        config=turn_config(body), history=history(body.get("history")), input=user_message(body)
    )


async def from_form(form: FormData) -> pb.StreamTurnRequest:
    """The multipart form of a turn: an `audio` file field plus the JSON fields as text fields."""
    fields: dict[str, Any] = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    if "history" in fields:
        try:
            fields["history"] = parse_json(fields["history"])
        except SchemaError:
            raise RequestError("the 'history' field must be JSON") from None
    for key, kind in (("max_output_tokens", int), ("temperature", float)):
        if key in fields:
            try:
                fields[key] = kind(fields[key])
            except ValueError:
                raise RequestError(f"'{key}' must be a number") from None
    checked(TurnBody, fields)
    request = pb.StreamTurnRequest(config=turn_config(fields), history=history(fields.get("history")))
    request.input.text = _str(fields, "text")
    upload = form.get("audio") or form.get("file")
    if isinstance(upload, UploadFile):
        # The core recognises the file from its bytes: file names and content types lie.
        request.input.audio.CopyFrom(pb.AudioInput(data=await upload.read()))
    elif upload is not None:
        raise RequestError("the 'audio' field must be a file")
    return request
