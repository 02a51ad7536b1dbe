"""Server VAD in a conversation: the turn_detection config checked, and the listener fed chunk by chunk.

The conversation asks this what it heard; the decisions that touch turns (barge-in, commit, answer) stay
in service.conversation.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Literal

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import InvalidInput
from service.turn import Turn
from service.turn_input import MAX_PCM_SAMPLE_RATE_HZ, MIN_PCM_SAMPLE_RATE_HZ, Limits
from service.vad import silero
from service.vad.listener import Heard, Utterance, VoiceListener
from service.vad.segmenter import VadSettings

MAX_SETTING_MS = 10_000
MAX_MIN_SPEECH_MS = 5_000
MIN_SILENCE_MS = 100
_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms", "min_speech_duration_ms", "echo_guard_ms")


def vad_settings(detection: pb.TurnDetection) -> VadSettings | None:
    """The checked server_vad settings, or None for manual turns; InvalidInput names a bad field."""
    if detection.type in (pb.TURN_DETECTION_TYPE_UNSPECIFIED, pb.TURN_DETECTION_TYPE_MANUAL):
        for field in (
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "min_speech_duration_ms",
            "echo_guard_ms",
        ):
            if detection.HasField(field):
                raise InvalidInput(
                    f"turn_detection.{field} applies to server_vad only", f"config.turn_detection.{field}"
                )
        return None
    if detection.type != pb.TURN_DETECTION_TYPE_SERVER_VAD:
        raise InvalidInput(
            f"unknown turn_detection.type {detection.type}; use manual or server_vad",
            "config.turn_detection.type",
        )
    defaults = VadSettings()
    threshold = detection.threshold if detection.HasField("threshold") else defaults.threshold
    if not (0.0 < threshold < 1.0 and math.isfinite(threshold)):
        raise InvalidInput(
            "turn_detection.threshold must be between 0 and 1 (exclusive)", "config.turn_detection.threshold"
        )
    return VadSettings(
        threshold=threshold,
        prefix_padding_ms=_ms(detection, "prefix_padding_ms", defaults.prefix_padding_ms, 0, MAX_SETTING_MS),
        silence_duration_ms=_ms(
            detection, "silence_duration_ms", defaults.silence_duration_ms, MIN_SILENCE_MS, MAX_SETTING_MS
        ),
        min_speech_duration_ms=_ms(
            detection, "min_speech_duration_ms", defaults.min_speech_duration_ms, 0, MAX_MIN_SPEECH_MS
        ),
        echo_guard_ms=_ms(detection, "echo_guard_ms", defaults.echo_guard_ms, 0, MAX_SETTING_MS),
    )


_MsField = Literal["prefix_padding_ms", "silence_duration_ms", "min_speech_duration_ms", "echo_guard_ms"]


def _ms(detection: pb.TurnDetection, field: _MsField, default: int, low: int, high: int) -> int:
    if not detection.HasField(field):
        return default
    value = int(getattr(detection, field))
    if not low <= value <= high:
        raise InvalidInput(
            f"turn_detection.{field} must be between {low} and {high} ms", f"config.turn_detection.{field}"
        )
    return value


class HandsFree:
    """One conversation's server VAD: the input format, the listener, the echo guard."""

    def __init__(self, settings: VadSettings, limits: Limits) -> None:
        self.settings = settings
        self.format: pb.AudioFormat | None = None
        self._limits = limits
        self._listener: VoiceListener | None = None

    async def hear(self, chunk: pb.AudioChunk) -> list[Heard]:
        """Feed one chunk of the conversation's pcm16 input."""
        if chunk.HasField("format"):
            if self.format is None:
                await self._open(chunk.format)
            elif chunk.format != self.format:
                raise InvalidInput(
                    "server_vad needs one audio format for the whole conversation", "audio.format"
                )
        if self._listener is None:
            raise InvalidInput("the first audio chunk of a conversation needs its format", "audio.format")
        return await self._listener.feed(chunk.data)

    async def _open(self, audio_format: pb.AudioFormat) -> None:
        rate = audio_format.sample_rate_hz
        if audio_format.encoding != pb.AUDIO_ENCODING_PCM16:
            raise InvalidInput(
                "server_vad needs pcm16 audio chunks (format.encoding)", "audio.format.encoding"
            )
        if not MIN_PCM_SAMPLE_RATE_HZ <= rate <= MAX_PCM_SAMPLE_RATE_HZ:
            raise InvalidInput(
                f"format.sample_rate_hz must be between {MIN_PCM_SAMPLE_RATE_HZ}"
                f" and {MAX_PCM_SAMPLE_RATE_HZ}",
                "audio.format.sample_rate_hz",
            )
        if audio_format.channels not in (0, 1):
            raise InvalidInput("pcm16 audio must be mono", "audio.format.channels")
        # The model loads once per process (about 0.1 s): off the event loop, so other streams go on.
        await asyncio.to_thread(silero.load)
        limit = min(self._limits.max_turn_audio_bytes, int(self._limits.max_turn_audio_seconds * rate) * 2)
        self.format = audio_format
        self._listener = VoiceListener(self.settings, rate, limit)

    def take(self) -> Utterance | None:
        """The speech under way, for a Commit sent by hand; None if nobody is speaking."""
        return self._listener.take() if self._listener is not None else None

    def drop(self) -> None:
        """Forget the speech under way."""
        if self._listener is not None:
            self._listener.drop()

    def echo_guarded(self, turn: Turn | None) -> bool:
        """Whether speech now falls in the echo guard window after `turn`'s first audio."""
        if not self.settings.echo_guard_ms or turn is None or turn.first_audio_at is None:
            return False
        return (time.perf_counter() - turn.first_audio_at) * 1000 < self.settings.echo_guard_ms

    def message(self, utterance: Utterance, text: str = "") -> pb.UserMessage:
        """The user message committing `utterance`."""
        return pb.UserMessage(text=text, audio=pb.AudioInput(data=utterance.pcm16, format=self.format))
