"""Validation of a Chat Completions request body, with OpenAI's checks and error shapes."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.audio import AudioFormatError, mp3_duration_seconds, parse_wav
from service.offline.speech import VOICES
from service.offline.wire import Json, error_object

# OpenAI accepts these output formats without streaming; only pcm16 streams.
KNOWN_OUTPUT_FORMATS = ("wav", "aac", "mp3", "flac", "opus", "pcm16")
INPUT_AUDIO_FORMATS = ("wav", "mp3")
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# Rough token costs: OpenAI bills about ten audio tokens per second and four characters per text token.
AUDIO_TOKENS_PER_SECOND = 10
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 3


class OpenAIError(Exception):
    """A request the real API would refuse, with the status and body it would send."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"
        self.param = param
        self.code = code

    def body(self) -> Json:
        """The JSON error body."""
        return error_object(str(self), self.type, self.param, self.code)


@dataclass(frozen=True)
class ChatRequest:
    """What the offline voice needs from a valid request."""

    model: str
    stream: bool
    wants_audio: bool
    voice: str
    audio_format: str
    include_usage: bool
    include_obfuscation: bool
    user_text: str
    user_audio_seconds: float | None
    assistant_turns: int
    prompt_text_tokens: int
    prompt_audio_tokens: int


def text_tokens(text: str) -> int:
    """Estimate the tokens of `text` (at least one for any non-empty text)."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def audio_tokens(seconds: float) -> int:
    """Estimate the tokens of `seconds` of audio."""
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def _invalid_value(value: object, param: str, allowed: tuple[str, ...]) -> OpenAIError:
    quoted = [f"'{item}'" for item in allowed]
    listing = ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    return OpenAIError(f"Invalid value: '{value}'. Supported values are: {listing}.", param, "invalid_value")


def _missing(param: str) -> OpenAIError:
    return OpenAIError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


@dataclass
class _Messages:
    """Running totals while walking `messages`."""

    user_text: str = ""
    user_audio_seconds: float | None = None
    assistant_turns: int = 0
    text_tokens: int = 0
    audio_seconds: float = 0.0
    has_audio: bool = False


def parse_chat_request(body: Any, is_known_audio_id: Callable[[str], bool]) -> ChatRequest:
    """Check `body` as OpenAI does for an audio model and return what answering it needs."""
    if not isinstance(body, dict):
        raise OpenAIError("Invalid type for request body: expected an object.", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        )
    stream = body.get("stream") is True
    stream_options = body.get("stream_options") or {}
    if stream_options and not stream:
        raise OpenAIError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    wants_audio, voice, audio_format = _output_audio(body, stream)
    walked = _walk_messages(messages, is_known_audio_id)
    if not wants_audio and not walked.has_audio:
        raise OpenAIError(
            "This model requires that either input content or output modality contain audio.",
            "model",
            "invalid_value",
        )
    return ChatRequest(
        model=model,
        stream=stream,
        wants_audio=wants_audio,
        voice=voice,
        audio_format=audio_format,
        include_usage=stream_options.get("include_usage") is True,
        include_obfuscation=stream_options.get("include_obfuscation") is True,
        user_text=walked.user_text,
        user_audio_seconds=walked.user_audio_seconds,
        assistant_turns=walked.assistant_turns,
        prompt_text_tokens=walked.text_tokens,
        prompt_audio_tokens=audio_tokens(walked.audio_seconds),
    )


def _output_audio(body: Json, stream: bool) -> tuple[bool, str, str]:
    """Return (audio wanted, voice, format) from `modalities` and `audio`."""
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list):
        raise OpenAIError("Invalid type for 'modalities': expected an array.", "modalities", "invalid_type")
    for index, modality in enumerate(modalities):
        if modality not in ("text", "audio"):
            raise _invalid_value(modality, f"modalities[{index}]", ("text", "audio"))
    if "audio" not in modalities:
        return False, "", ""
    audio = body.get("audio")
    if not isinstance(audio, dict):
        raise _missing("audio")
    voice = audio.get("voice")
    custom = isinstance(voice, dict)
    if isinstance(voice, dict):
        voice = voice.get("id")  # custom voices are {"id": "voice_..."}
    if not isinstance(voice, str) or not voice:
        raise _missing("audio.voice")
    if not custom and voice not in VOICES:
        # As OpenAI answers a name it does not have: 400 invalid_value listing the voices.
        raise _invalid_value(voice, "audio.voice", tuple(VOICES))
    audio_format = audio.get("format")
    if audio_format is None:
        raise _missing("audio.format")
    if audio_format not in KNOWN_OUTPUT_FORMATS:
        raise _invalid_value(audio_format, "audio.format", KNOWN_OUTPUT_FORMATS)
    if stream and audio_format != "pcm16":
        raise OpenAIError(
            f"Unsupported value: 'audio.format' does not support '{audio_format}' when stream=true. "
            "Supported values are: 'pcm16'.",
            "audio.format",
            "unsupported_value",
        )
    return True, voice, str(audio_format)


def _walk_messages(messages: list[Any], is_known_audio_id: Callable[[str], bool]) -> _Messages:
    """Validate every message; remember the last user message and count the prompt."""
    walked = _Messages()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise OpenAIError(
                f"Invalid type for 'messages[{index}]': expected an object.", f"messages[{index}]"
            )
        role = message.get("role")
        if role not in _ROLES:
            raise _invalid_value(role, f"messages[{index}].role", _ROLES)
        walked.text_tokens += _TOKENS_PER_MESSAGE
        text, seconds = _content(message.get("content"), index)
        walked.text_tokens += text_tokens(text)
        walked.audio_seconds += seconds or 0.0
        walked.has_audio = walked.has_audio or seconds is not None
        if role == "user":
            walked.user_text, walked.user_audio_seconds = text, seconds
        elif role == "assistant":
            walked.assistant_turns += 1
            if message.get("audio") is not None:
                _check_audio_reference(message["audio"], index, is_known_audio_id)
                walked.has_audio = True
    return walked


def _check_audio_reference(audio: Any, index: int, is_known_audio_id: Callable[[str], bool]) -> None:
    """An assistant message may refer to an earlier spoken answer by id, while that id lives."""
    audio_id = audio.get("id") if isinstance(audio, dict) else None
    if not isinstance(audio_id, str):
        raise _missing(f"messages[{index}].audio.id")
    if not is_known_audio_id(audio_id):
        raise OpenAIError(
            f"Audio with id '{audio_id}' not found or expired.",
            f"content.messages[{index}].audio.id",
            "audio_not_found",
        )


def _content(content: Any, index: int) -> tuple[str, float | None]:
    """Return a message's text and its seconds of input audio (None when it has no audio)."""
    if content is None or isinstance(content, str):
        return content or "", None
    if not isinstance(content, list):
        raise OpenAIError(
            f"Invalid type for 'messages[{index}].content': expected a string or an array.",
            f"messages[{index}].content",
            "invalid_type",
        )
    texts: list[str] = []
    seconds: float | None = None
    for part_index, part in enumerate(content):
        param = f"messages[{index}].content[{part_index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "input_audio":
            seconds = (seconds or 0.0) + _input_audio_seconds(part.get("input_audio"), param)
        elif kind not in ("image_url", "file", "refusal"):
            # Images and files are valid for other models; the offline voice just cannot read them.
            raise _invalid_value(kind, f"{param}.type", ("text", "image_url", "input_audio", "file"))
    return " ".join(texts), seconds


def _input_audio_seconds(input_audio: Any, param: str) -> float:
    """Decode one input_audio part and return its duration."""
    if not isinstance(input_audio, dict):
        raise _missing(f"{param}.input_audio")
    audio_format = input_audio.get("format")
    if audio_format not in INPUT_AUDIO_FORMATS:
        raise _invalid_value(audio_format, f"{param}.input_audio.format", INPUT_AUDIO_FORMATS)
    data = input_audio.get("data")
    try:
        if not isinstance(data, str):
            raise AudioFormatError("expected base64 text")
        raw = base64.b64decode(data, validate=True)
        if audio_format == "wav":
            return parse_wav(raw).duration_seconds
        return mp3_duration_seconds(raw)
    except (AudioFormatError, binascii.Error) as exc:
        raise OpenAIError(
            f"Audio file might be corrupted or unsupported ({audio_format}: {exc}).",
            f"{param}.input_audio.data",
            "unsupported_format",
        ) from exc
