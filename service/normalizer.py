"""The normalizer: upstream chat-completion chunks in, typed audiochat events out. Pure: no I/O.

It owns every quirk of the upstream stream (see the wire-format notes in the README):
- `delta.audio` is outside the published schema, so chunks are read as plain mappings;
- `audio.id` is repeated (first transcript chunk, first data chunk): it is set, never concatenated;
- each base64 `audio.data` piece is decoded on its own, and an odd trailing byte is carried to the next
  piece so every AudioDelta holds whole 16-bit samples;
- the last audio chunk may hold only `expires_at`, with or without any `finish_reason`, in either order;
- the usage chunk has empty `choices`; unknown fields are ignored;
- text-only answers arrive in `delta.content`, spoken ones in `delta.audio.transcript`;
- an `{"error": ...}` frame may arrive after a 200, and the stream may end without `[DONE]`.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service import usage as service_usage
from service.errors import turn_error_from_stream_frame

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000
BYTES_PER_SAMPLE = 2
OUTPUT_FORMAT = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=SAMPLE_RATE_HZ, channels=1)

FINISH_REASONS: dict[str, pb.FinishReason.ValueType] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
}


@dataclass(slots=True)
class Outcome:
    """How a turn's upstream stream ended, and what it said in total."""

    reason: pb.FinishReason.ValueType
    transcript: str
    audio_id: str
    audio_expires_at: int
    audio_samples: int
    error: pb.TurnError | None = None


class Normalizer:
    """Folds the chunks of one streamed completion into deltas; `finish` gives the outcome."""

    __slots__ = (
        "_audio_id",
        "_carry",
        "_error",
        "_expires_at",
        "_finish_reason",
        "_next_sample",
        "_text_pieces",
        "usage",
    )

    def __init__(self) -> None:
        self._text_pieces: list[str] = []
        self._audio_id = ""
        self._expires_at = 0
        self._next_sample = 0
        self._carry = b""
        self._finish_reason: str | None = None
        self._error: pb.TurnError | None = None
        self.usage: pb.Usage | None = None

    @property
    def failed(self) -> bool:
        """True once an error frame arrived: nothing after it belongs to the answer."""
        return self._error is not None

    @property
    def audio_samples(self) -> int:
        """Samples emitted so far."""
        return self._next_sample

    def feed(self, chunk: Mapping[str, Any]) -> list[pb.TurnEvent]:
        """Fold one decoded chunk; return the events it carries (turn_id and sequence unset), in order."""
        error = chunk.get("error")
        if error is not None:
            self._error = turn_error_from_stream_frame(error if isinstance(error, Mapping) else {})
            return []
        deltas: list[pb.TurnEvent] = []
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                self._fold_delta(delta, deltas)
            reason = choice.get("finish_reason")
            if reason:
                self._finish_reason = reason
        usage = chunk.get("usage")
        if usage:
            self.usage = usage_from_upstream(usage)
            deltas.append(pb.TurnEvent(usage=self.usage))
        return deltas

    def _fold_delta(self, delta: Mapping[str, Any], deltas: list[pb.TurnEvent]) -> None:
        # A refusal is what the model said instead of an answer: the listener sees it like content.
        for key in ("content", "refusal"):
            text = delta.get(key)
            if text:
                self._text_pieces.append(text)
                deltas.append(pb.TurnEvent(text=pb.TextDelta(text=text, source=pb.TEXT_SOURCE_CONTENT)))
        audio = delta.get("audio")
        if not audio:
            return
        audio_id = audio.get("id")
        if audio_id:
            self._audio_id = audio_id
        expires_at = audio.get("expires_at")
        if expires_at:
            self._expires_at = int(expires_at)
        transcript = audio.get("transcript")
        if transcript:
            self._text_pieces.append(transcript)
            deltas.append(pb.TurnEvent(text=pb.TextDelta(text=transcript, source=pb.TEXT_SOURCE_TRANSCRIPT)))
        data = audio.get("data")
        if data:
            pcm = self._whole_samples(binascii.a2b_base64(data))
            if pcm:
                audio_delta = pb.AudioDelta(data=pcm, format=OUTPUT_FORMAT, start_sample=self._next_sample)
                deltas.append(pb.TurnEvent(audio=audio_delta))
                self._next_sample += len(pcm) // BYTES_PER_SAMPLE

    def _whole_samples(self, pcm: bytes) -> bytes:
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) % BYTES_PER_SAMPLE:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        return pcm

    def finish(self, saw_done: bool) -> Outcome:
        """The outcome once the stream ended; `saw_done` tells whether `[DONE]` arrived."""
        if self._carry:
            # Half a sample cannot be played; it only happens when the upstream broke mid-sample.
            log.warning("upstream audio ended on half a sample; dropping its last byte")
            self._carry = b""
        reason: pb.FinishReason.ValueType
        error = self._error
        if error is None and not (saw_done or self._finish_reason or self._expires_at):
            error = pb.TurnError(
                code=pb.ERROR_CODE_UNAVAILABLE,
                message="the upstream stream ended before the answer was complete",
                retryable=True,
            )
        if error is not None:
            reason = pb.FINISH_REASON_ERROR
        else:
            # No finish_reason at all is the normal end of a spoken answer (expires_at is its last chunk).
            reason = FINISH_REASONS.get(self._finish_reason or "stop", pb.FINISH_REASON_STOP)
        return Outcome(
            reason=reason,
            transcript="".join(self._text_pieces),
            audio_id=self._audio_id,
            audio_expires_at=self._expires_at,
            audio_samples=self._next_sample,
            error=error,
        )

    def transcript(self) -> str:
        """The text received so far."""
        return "".join(self._text_pieces)

    @property
    def audio_id(self) -> str:
        """The audio handle, once the upstream sent it."""
        return self._audio_id

    @property
    def audio_expires_at(self) -> int:
        """When the audio handle expires, once the upstream sent it."""
        return self._expires_at


def usage_from_upstream(usage: Mapping[str, Any]) -> pb.Usage:
    """Map the upstream usage object to Usage; counts it did not send stay unset."""
    return service_usage.from_upstream(usage)
