"""The normalizer: upstream chat-completion chunks in, typed audiochat events out. Pure: no I/O.

It owns every quirk of the upstream stream (see the wire-format notes in the README):
- `delta.audio` is outside the published schema, so chunks are read as plain mappings;
- `audio.id` is repeated (first transcript chunk, first data chunk): it is set, never concatenated;
- each base64 `audio.data` piece is decoded on its own, and an odd trailing byte is carried to the next
  piece so every AudioDelta holds whole 16-bit samples;
- the last audio chunk may hold only `expires_at`, with or without any `finish_reason`, in either order;
- the usage chunk has empty `choices`; unknown fields are ignored;
- text-only answers arrive in `delta.content`, spoken ones in `delta.audio.transcript`;
- tool calls arrive in `delta.tool_calls` pieces keyed by `index`, possibly after speech (service.tool_calls);
- an `{"error": ...}` frame may arrive after a 200, and the stream may end without `[DONE]`;
- anything else that breaks the format (bad base64, a field of the wrong type, half a sample at the end)
  ends the turn with `upstream_malformed`: the listener is told audio is missing, never handed a clean stop;
- an audio piece larger than `max_audio_delta_bytes` is split into several AudioDeltas, so one huge
  upstream chunk never exceeds the gRPC message limit.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service import usage as service_usage
from service.errors import turn_error_from_stream_frame
from service.tool_calls import ToolCallFolder

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000
BYTES_PER_SAMPLE = 2
# 1 MiB is about 21.8 s of pcm16: far below gRPC's message limits, far above any real upstream piece.
MAX_AUDIO_DELTA_BYTES = 1024 * 1024
OUTPUT_FORMAT = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=SAMPLE_RATE_HZ, channels=1)

FINISH_REASONS: dict[str, pb.FinishReason.ValueType] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
    # Never sent by Chat Completions: a cancelled Realtime response (service.realtime_mapping).
    "interrupted": pb.FINISH_REASON_INTERRUPTED,
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
    tool_calls: list[pb.ToolCall] = field(default_factory=list)


class MalformedChunk(ValueError):
    """An upstream chunk that does not follow the Chat Completions stream format; the message says how."""


def malformed_error(why: str) -> pb.TurnError:
    """The in-band error of a turn whose upstream broke the wire format; retryable."""
    return pb.TurnError(
        code=pb.ERROR_CODE_UPSTREAM_MALFORMED,
        message=f"the upstream sent a malformed chunk ({why}); the answer is incomplete",
        retryable=True,
    )


class Normalizer:
    """Folds the chunks of one streamed completion into deltas; `finish` gives the outcome."""

    __slots__ = (
        "_audio_id",
        "_carry",
        "_error",
        "_expires_at",
        "_finish_reason",
        "_max_audio_bytes",
        "_next_sample",
        "_text_pieces",
        "_tools",
        "usage",
    )

    def __init__(self, max_audio_delta_bytes: int = MAX_AUDIO_DELTA_BYTES) -> None:
        # Whole samples per delta, and at least one.
        self._max_audio_bytes = max(
            BYTES_PER_SAMPLE, max_audio_delta_bytes // BYTES_PER_SAMPLE * BYTES_PER_SAMPLE
        )
        self._text_pieces: list[str] = []
        self._audio_id = ""
        self._expires_at = 0
        self._next_sample = 0
        self._carry = b""
        self._finish_reason: str | None = None
        self._error: pb.TurnError | None = None
        self._tools = ToolCallFolder()
        self.usage: pb.Usage | None = None

    @property
    def failed(self) -> bool:
        """True once an error frame arrived: nothing after it belongs to the answer."""
        return self._error is not None

    @property
    def audio_samples(self) -> int:
        """Samples emitted so far."""
        return self._next_sample

    def feed(self, chunk: object) -> list[pb.TurnEvent]:
        """Fold one decoded chunk; return the events it carries (turn_id and sequence unset), in order.

        A chunk that breaks the format yields no event and sets the `upstream_malformed` error (`failed`).
        """
        try:
            return self._feed(chunk)
        except (MalformedChunk, binascii.Error) as exc:
            why = str(exc)
        except (TypeError, ValueError, LookupError, AttributeError) as exc:
            # Whatever shape the upstream invents, it ends this turn, not the process or the call.
            why = f"{type(exc).__name__}: {exc}"[:200]
        log.warning("malformed upstream chunk: %s", why)
        self._error = malformed_error(why)
        return []

    def _feed(self, chunk: object) -> list[pb.TurnEvent]:
        if not isinstance(chunk, Mapping):
            raise MalformedChunk(f"a chunk must be a JSON object, not {type(chunk).__name__}")
        error = chunk.get("error")
        if error is not None:
            self._error = turn_error_from_stream_frame(error if isinstance(error, Mapping) else {})
            return []
        deltas: list[pb.TurnEvent] = []
        choices = _typed(chunk, "choices", list)
        if choices:
            choice = choices[0]
            if not isinstance(choice, Mapping):
                raise MalformedChunk("choices[0] must be an object")
            delta = _typed(choice, "delta", Mapping)
            if delta:
                self._fold_delta(delta, deltas)
            reason = _typed(choice, "finish_reason", str)
            if reason:
                self._finish_reason = reason
        usage = _typed(chunk, "usage", Mapping)
        if usage:
            self.usage = usage_from_upstream(usage)
            deltas.append(pb.TurnEvent(usage=self.usage))
        return deltas

    def _fold_delta(self, delta: Mapping[str, Any], deltas: list[pb.TurnEvent]) -> None:
        # A refusal is what the model said instead of an answer: the listener sees it like content.
        for key in ("content", "refusal"):
            text = _typed(delta, key, str)
            if text:
                self._text_pieces.append(text)
                deltas.append(pb.TurnEvent(text=pb.TextDelta(text=text, source=pb.TEXT_SOURCE_CONTENT)))
        tool_calls = _typed(delta, "tool_calls", list)
        if tool_calls:
            # Past its bounds the folder raises ToolCallOverflow (a ValueError): upstream_malformed.
            deltas.extend(pb.TurnEvent(tool_call=piece) for piece in self._tools.feed(tool_calls))
        audio = _typed(delta, "audio", Mapping)
        if not audio:
            return
        audio_id = _typed(audio, "id", str)
        expires_at = _typed(audio, "expires_at", int)
        transcript = _typed(audio, "transcript", str)
        data = _typed(audio, "data", str)
        if expires_at is not None and not 0 <= expires_at < 2**63:
            raise MalformedChunk(f"'expires_at' {expires_at} is not a unix time in seconds")
        # Decoded before any state changes, so a bad piece leaves nothing half-applied.
        pcm = binascii.a2b_base64(data, strict_mode=True) if data else b""
        if audio_id:
            self._audio_id = audio_id
        if expires_at:
            self._expires_at = expires_at
        if transcript:
            self._text_pieces.append(transcript)
            deltas.append(pb.TurnEvent(text=pb.TextDelta(text=transcript, source=pb.TEXT_SOURCE_TRANSCRIPT)))
        pcm = self._whole_samples(pcm)
        step = self._max_audio_bytes
        for offset in range(0, len(pcm), step):
            piece = pcm[offset : offset + step]
            audio_delta = pb.AudioDelta(
                data=piece,
                format=OUTPUT_FORMAT,
                start_sample=self._next_sample,
                samples=len(piece) // BYTES_PER_SAMPLE,
            )
            deltas.append(pb.TurnEvent(audio=audio_delta))
            self._next_sample += len(piece) // BYTES_PER_SAMPLE

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
        error = self._error
        if self._carry:
            # Half a sample cannot be played: the upstream's pcm16 lost a byte, so the answer is not whole.
            self._carry = b""
            if error is None:
                log.warning("upstream audio ended on half a sample")
                error = malformed_error("the audio ended on half a 16-bit sample")
        reason: pb.FinishReason.ValueType
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
            tool_calls=self._tools.calls() if error is None else [],
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


def _typed(mapping: Mapping[str, Any], key: str, kind: type) -> Any:
    """`mapping[key]` if absent, null or of `kind` (bool is no int here); else MalformedChunk naming it."""
    value = mapping.get(key)
    if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise MalformedChunk(
        f"{key!r} must be {_KIND_NAMES.get(kind, kind.__name__)}, not {type(value).__name__}"
    )


_KIND_NAMES: dict[type, str] = {list: "an array", Mapping: "an object", str: "a string", int: "an integer"}


def usage_from_upstream(usage: Mapping[str, Any]) -> pb.Usage:
    """Map the upstream usage object to Usage; counts it did not send stay unset."""
    return service_usage.from_upstream(usage)
