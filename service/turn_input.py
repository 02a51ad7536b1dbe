"""What a turn is asked, validated: its settings, its history and the new user input.

Everything a client sends passes through here once, so bad input gets one clear INVALID_ARGUMENT
message wherever it came from (StreamTurn, Converse, or an edge adapter through them).
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service.audio import AudioFormatError, parse_wav, wrap_pcm16_as_wav
from service.audio.decode import DecodeLimit, DecodeLimits, decode_file
from service.audio.encode import MAX_BITRATE_BPS, MIN_BITRATE_BPS, OutputEncoding
from service.audio.sniff import sniff
from service.errors import InvalidInput, WrongState
from service.pass_through import check_params, parse_extra_body
from service.tool_input import CalledTool, PendingCalls, ToolEntry, called_tools, tool_params

STREAMED_SAMPLE_RATE_HZ = 24_000
MIN_PCM_SAMPLE_RATE_HZ = 8_000
MAX_PCM_SAMPLE_RATE_HZ = 96_000


# The model's own output: what the upstream streams, and the default answer format.
OUTPUT_PCM16 = pb.AudioFormat(
    encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=STREAMED_SAMPLE_RATE_HZ, channels=1
)
# Encodings an answer can be delivered in, by the name the encoder knows them by.
OUTPUT_ENCODINGS: dict[int, OutputEncoding] = {
    pb.AUDIO_ENCODING_PCM16: "pcm16",
    pb.AUDIO_ENCODING_WAV: "wav",
    pb.AUDIO_ENCODING_OPUS: "opus",
    pb.AUDIO_ENCODING_WEBM_OPUS: "webm_opus",
    pb.AUDIO_ENCODING_AAC: "aac",
    pb.AUDIO_ENCODING_MP3: "mp3",
    pb.AUDIO_ENCODING_FLAC: "flac",
}


class TooLarge(InvalidInput):
    """Input over a size limit (HTTP 413, WebSocket 1009 at the edge)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one turn may carry."""

    max_turn_audio_bytes: int = 20 * 1024 * 1024
    max_turn_audio_seconds: float = 300.0
    max_audio_decode_seconds: float = 10.0
    max_text_chars: int = 200_000
    max_history_items: int = 500
    # Bytes of pcm16 per AudioDelta: a bigger upstream piece is split, so no event exceeds the gRPC limit.
    max_audio_delta_bytes: int = 1024 * 1024

    @property
    def decode_limits(self) -> DecodeLimits:
        """The bounds the audio decoder applies."""
        return DecodeLimits(self.max_turn_audio_seconds, self.max_audio_decode_seconds)


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-side defaults for what a TurnConfig leaves empty."""

    model: str = "gpt-4o-audio-preview"
    voice: str = "alloy"


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """A TurnConfig with defaults applied and values checked."""

    model: str
    modalities: tuple[str, ...]
    voice: str
    instructions: str
    max_output_tokens: int | None
    temperature: float | None
    # Extra upstream parameters, forwarded as written (checked by service.pass_through).
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    # The upstream's tools, tool_choice and parallel_tool_calls, as the client set them (service.tool_input).
    tools: dict[str, Any] = field(default_factory=dict)
    # The answer's audio as AudioDeltas carry it: pcm16 as the upstream sends it, or what it is encoded into.
    output_format: pb.AudioFormat = field(default_factory=lambda: OUTPUT_PCM16)

    @property
    def speaks(self) -> bool:
        """Whether the answer includes audio."""
        return "audio" in self.modalities


@dataclass(frozen=True, slots=True)
class PreparedAudio:
    """User audio ready for the upstream: a whole wav or mp3 file, base64-encoded."""

    data_b64: str
    format: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class UserEntry:
    """A user message: text, audio, or both."""

    text: str
    audio: PreparedAudio | None


@dataclass(frozen=True, slots=True)
class AssistantEntry:
    """An earlier answer: its text, and its audio handle while that is valid."""

    text: str
    audio_id: str = ""
    audio_expires_at: int = 0
    tool_calls: tuple[CalledTool, ...] = ()


Entry = UserEntry | AssistantEntry | ToolEntry


def resolve_settings(config: pb.TurnConfig, defaults: Defaults) -> TurnSettings:
    """Apply defaults to a TurnConfig and reject what the upstream could never stream."""
    modalities = set(config.modalities)
    unknown = modalities - {pb.MODALITY_TEXT, pb.MODALITY_AUDIO, pb.MODALITY_UNSPECIFIED}
    if unknown:
        raise InvalidInput(f"unknown modality {sorted(unknown)[0]}")
    # Audio always comes with its transcript upstream, so "audio" alone means text and audio.
    speaks = not modalities - {pb.MODALITY_UNSPECIFIED} or pb.MODALITY_AUDIO in modalities
    output_format = output_audio_format(config.output_audio_format)
    temperature = shortest_float32(config.temperature) if config.HasField("temperature") else None
    if temperature is not None and not (0.0 <= temperature <= 2.0 and math.isfinite(temperature)):
        raise InvalidInput("temperature must be between 0 and 2", "config.temperature")
    max_tokens = config.max_output_tokens if config.HasField("max_output_tokens") else None
    if max_tokens == 0:
        raise InvalidInput("max_output_tokens must be positive when set", "config.max_output_tokens")
    extra_body = parse_extra_body(config.extra_body) if config.extra_body else {}
    typed = {name for name in ("temperature", "max_output_tokens") if config.HasField(name)}
    check_params(extra_body, "config.extra_body", typed)
    return TurnSettings(
        model=config.model or defaults.model,
        modalities=("text", "audio") if speaks else ("text",),
        voice=config.voice or defaults.voice,
        instructions=config.instructions,
        max_output_tokens=max_tokens,
        temperature=temperature,
        extra_body=extra_body,
        tools=tool_params(config),
        output_format=output_format,
    )


def shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32: what the client wrote (0.7), not the
    float32's exact binary value widened to a double (0.699999988079071)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def output_audio_format(output: pb.AudioFormat) -> pb.AudioFormat:
    """The answer's AudioFormat: 24 kHz mono in an encoding of OUTPUT_ENCODINGS, with its bitrate if any."""
    encoding = output.encoding or pb.AUDIO_ENCODING_PCM16
    if encoding not in OUTPUT_ENCODINGS:
        names = ", ".join(OUTPUT_ENCODINGS.values())
        raise InvalidInput(
            f"output_audio_format.encoding {_encoding_name(encoding)} is not one of {names}",
            "config.output_audio_format.encoding",
        )
    if output.sample_rate_hz not in (0, STREAMED_SAMPLE_RATE_HZ) or output.channels not in (0, 1):
        raise InvalidInput(
            "output_audio_format: answers are mono at 24000 Hz (sample_rate_hz, channels)",
            "config.output_audio_format.sample_rate_hz",
        )
    if output.bitrate_bps and not MIN_BITRATE_BPS <= output.bitrate_bps <= MAX_BITRATE_BPS:
        raise InvalidInput(
            f"output_audio_format.bitrate_bps must be between {MIN_BITRATE_BPS} and {MAX_BITRATE_BPS}",
            "config.output_audio_format.bitrate_bps",
        )
    resolved = pb.AudioFormat(encoding=encoding, sample_rate_hz=STREAMED_SAMPLE_RATE_HZ, channels=1)
    if OUTPUT_ENCODINGS[encoding] in ("opus", "webm_opus", "aac", "mp3"):
        resolved.bitrate_bps = output.bitrate_bps
    return resolved


def _encoding_name(encoding: int) -> str:
    if encoding in pb.AudioEncoding.values():
        return pb.AudioEncoding.Name(encoding).removeprefix("AUDIO_ENCODING_").lower()  # type: ignore[arg-type]
    return str(encoding)


def prepare_audio(audio: pb.AudioInput, limits: Limits) -> PreparedAudio:
    """Check user audio and turn it into a file the upstream accepts: mp3 and mono 16-bit PCM wav as they
    are, raw pcm16 wrapped as wav, any other accepted file decoded to 24 kHz mono pcm16 wav.

    The container is sniffed from the bytes: the encoding a client names only matters for raw pcm16.
    May take up to limits.max_audio_decode_seconds: call it off the event loop (see `user_entry_off_loop`).
    """
    data = audio.data
    if not data:
        raise InvalidInput("audio is empty")
    if len(data) > limits.max_turn_audio_bytes:
        raise TooLarge(f"audio of {len(data)} bytes is over the limit of {limits.max_turn_audio_bytes} bytes")
    encoding = audio.format.encoding
    if encoding == pb.AUDIO_ENCODING_PCM16:
        prepared = _prepare_pcm16(data, audio.format)
    elif encoding in pb.AudioEncoding.values():
        prepared = _prepare_file(data, limits, _encoding_name(encoding))
    else:
        raise InvalidInput(f"unknown audio encoding {encoding}; send pcm16 with its rate, or a file")
    _check_duration(prepared.duration_ms, limits)
    return prepared


def _prepare_file(data: bytes, limits: Limits, declared: str) -> PreparedAudio:
    container = sniff(data)
    # Errors name what the bytes are, else what the client said they were.
    name = (container or ("audio" if declared == "unspecified" else declared)).upper()
    try:
        if container == "mp3":
            # Decoded only to check it and to measure it without the encoder's delay and padding.
            duration_ms = decode_file(data, limits.decode_limits).duration_ms
            return PreparedAudio(_b64(data), "mp3", duration_ms)
        if container == "wav":
            info = parse_wav(data)
            # Mono 16-bit PCM is what raw pcm16 input becomes too, at its own rate: it goes as it is.
            if (info.format_tag, info.channels, info.bits_per_sample) == (1, 1, 16) and (
                MIN_PCM_SAMPLE_RATE_HZ <= info.sample_rate <= MAX_PCM_SAMPLE_RATE_HZ
            ):
                return PreparedAudio(_b64(data), "wav", round(info.duration_seconds * 1000))
            # A long WAV is refused by its header, before decoding a byte of it.
            _check_duration(round(info.duration_seconds * 1000), limits)
        decoded = decode_file(data, limits.decode_limits)
    except DecodeLimit as exc:
        raise TooLarge(f"{name} audio refused: {exc}") from exc
    except AudioFormatError as exc:
        raise InvalidInput(f"unreadable {name}: {exc}") from exc
    return decoded_audio(decoded.pcm)


def decoded_audio(pcm: bytes) -> PreparedAudio:
    """24 kHz mono pcm16 from the decoder, as the wav file the upstream takes."""
    return PreparedAudio(
        _b64(wrap_pcm16_as_wav(pcm)), "wav", len(pcm) * 1000 // (2 * STREAMED_SAMPLE_RATE_HZ)
    )


def _check_duration(duration_ms: int, limits: Limits) -> None:
    if duration_ms > limits.max_turn_audio_seconds * 1000:
        raise TooLarge(
            f"audio of {duration_ms / 1000:.1f} s is over the limit of {limits.max_turn_audio_seconds:g} s"
        )


def _prepare_pcm16(data: bytes, audio_format: pb.AudioFormat) -> PreparedAudio:
    rate = audio_format.sample_rate_hz
    if not MIN_PCM_SAMPLE_RATE_HZ <= rate <= MAX_PCM_SAMPLE_RATE_HZ:
        raise InvalidInput(
            "pcm16 audio needs format.sample_rate_hz between"
            f" {MIN_PCM_SAMPLE_RATE_HZ} and {MAX_PCM_SAMPLE_RATE_HZ}"
        )
    if audio_format.channels not in (0, 1):
        raise InvalidInput("pcm16 audio must be mono")
    if len(data) % 2:
        raise InvalidInput("pcm16 audio must hold whole 16-bit samples (an even number of bytes)")
    return PreparedAudio(_b64(wrap_pcm16_as_wav(data, rate)), "wav", len(data) * 1000 // (2 * rate))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def user_entry(message: pb.UserMessage, limits: Limits, *, required: bool) -> UserEntry:
    """Validate a user message; a required one (the new input) must hold text or audio."""
    if len(message.text) > limits.max_text_chars:
        raise TooLarge(f"text of {len(message.text)} characters is over the limit of {limits.max_text_chars}")
    audio = prepare_audio(message.audio, limits) if message.HasField("audio") else None
    if required and not message.text.strip() and audio is None:
        raise InvalidInput("empty turn: the input needs text or audio")
    return UserEntry(text=message.text, audio=audio)


def input_required(history: Sequence[Entry]) -> bool:
    """Whether a turn's new input must hold text or audio: it may be empty only to continue after the
    history's tool results."""
    return not (bool(history) and isinstance(history[-1], ToolEntry))


async def user_entry_off_loop(message: pb.UserMessage, limits: Limits, *, required: bool) -> UserEntry:
    """`user_entry`, on a worker thread when it has a file to decode: decoding never stalls other streams."""
    if not _has_file(message):
        return user_entry(message, limits, required=required)
    return await asyncio.to_thread(user_entry, message, limits, required=required)


async def history_entries_off_loop(items: Sequence[pb.HistoryItem], limits: Limits) -> list[Entry]:
    """`history_entries`, on a worker thread when a recording in it needs decoding."""
    if not any(_has_file(item.user) for item in items if item.HasField("user")):
        return history_entries(items, limits)
    return await asyncio.to_thread(history_entries, items, limits)


def _has_file(message: pb.UserMessage) -> bool:
    return message.HasField("audio") and message.audio.format.encoding != pb.AUDIO_ENCODING_PCM16


def history_entries(items: Iterable[pb.HistoryItem], limits: Limits) -> list[Entry]:
    """Validate a client-supplied history, oldest first; every tool call must have its result, right after."""
    entries: list[Entry] = []
    pending = PendingCalls()
    for index, item in enumerate(items):
        if len(entries) >= limits.max_history_items:
            raise TooLarge(f"history is over the limit of {limits.max_history_items} messages")
        where = f"history[{index}]"
        which = item.WhichOneof("message")
        if which != "tool_result":
            pending.require_answered(where)
        if which == "user":
            entries.append(user_entry(item.user, limits, required=False))
        elif which == "assistant":
            assistant = item.assistant
            calls = called_tools(assistant.tool_calls, f"{where}.assistant")
            if not assistant.text and not assistant.audio_id and not calls:
                raise InvalidInput(f"{where}: an assistant message needs text, an audio_id or tool_calls")
            pending.expect(calls)
            entries.append(
                AssistantEntry(assistant.text, assistant.audio_id, assistant.audio_expires_at, calls)
            )
        elif which == "tool_result":
            result = item.tool_result
            if len(result.content) > limits.max_text_chars:
                raise TooLarge(f"{where}.tool_result.content is over the limit of {limits.max_text_chars}")
            try:
                pending.answer(result.tool_call_id, f"{where}.tool_result")
            except WrongState as exc:  # out of place in a history is malformed input, not a state
                raise InvalidInput(str(exc)) from None
            entries.append(ToolEntry(result.tool_call_id, result.content))
        else:
            raise InvalidInput(f"{where}: a history item must be a user, assistant or tool_result message")
    pending.require_answered("history")
    return entries
