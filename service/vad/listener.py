"""Server VAD for one conversation: streamed pcm16 in, speech started and committed utterances out.

Holds only what a turn can still need: while nobody speaks, the last `prefix_padding_ms` (plus the
detector's look-behind); while someone speaks, everything since the start minus the padding, bounded by
the turn limits (speech that reaches them is committed there, as if the speaker had paused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from service.vad.segmenter import Segmenter, SpeechStarted, SpeechStopped, VadSettings
from service.vad.silero import SileroStream

# Audio kept after the end of speech: the end is judged per 32 ms frame and a final consonant can be
# quieter than the model's threshold.
END_PADDING_MS: Final = 200
# How far behind the bytes received the detector's judgement can be (a partial frame, the resampler's
# delay): kept in silence so a start found late still has its prefix padding.
_LOOK_BEHIND_MS: Final = 200


@dataclass(frozen=True, slots=True)
class Utterance:
    """Speech to commit: pcm16 from `audio_start_ms - prefix_padding_ms` to just after `audio_end_ms`."""

    audio_start_ms: int
    audio_end_ms: int
    pcm16: bytes
    received_ms: int
    """Audio received when it was cut: `received_ms - audio_end_ms` is how long ago the speaker stopped."""


Heard = SpeechStarted | Utterance


class VoiceListener:
    """Feeds a conversation's input audio to Silero and the segmenter; positions in ms from byte 0."""

    def __init__(self, settings: VadSettings, sample_rate_hz: int, max_utterance_bytes: int) -> None:
        self.settings = settings
        self.sample_rate_hz = sample_rate_hz
        self._detector = SileroStream(sample_rate_hz)
        self._segmenter = Segmenter(settings, self._detector.frame_ms)
        self._max_bytes = max_utterance_bytes - max_utterance_bytes % 2
        self._buffer = bytearray()
        self._buffer_start = 0  # absolute byte offset of _buffer[0]
        self._received = 0  # bytes received since the first one
        self._started: SpeechStarted | None = None

    def _byte_at(self, ms: float) -> int:
        return max(0, round(ms * self.sample_rate_hz / 1000)) * 2

    def _ms_at(self, byte: int) -> int:
        return byte * 1000 // (2 * self.sample_rate_hz)

    async def feed(self, pcm16: bytes) -> list[Heard]:
        """Take the next bytes; return what they completed: confirmed starts and utterances to commit."""
        self._buffer += pcm16
        self._received += len(pcm16)
        heard: list[Heard] = []
        for probability in await self._detector.feed_batched(pcm16):
            event = self._segmenter.push(probability)
            if isinstance(event, SpeechStarted):
                self._started = event
                heard.append(event)
            elif isinstance(event, SpeechStopped):
                heard.append(self._cut(event.audio_end_ms + END_PADDING_MS, event.audio_end_ms))
        start_ms = self._segmenter.candidate_start_ms
        if start_ms is not None and self._received - self._keep_from(start_ms) >= self._max_bytes:
            # The turn limit: commit what was said so far and listen for the rest as a new turn
            # (an unconfirmed sound that long is no speech: it is dropped).
            if self._segmenter.in_speech:
                heard.append(self._cut(self._ms_at(self._received), self._ms_at(self._received)))
            self.drop()
        self._trim()
        return heard

    def _keep_from(self, start_ms: float) -> int:
        return self._byte_at(start_ms - self.settings.prefix_padding_ms)

    def _cut(self, until_ms: float, end_ms: int) -> Utterance:
        start_ms = self._segmenter.candidate_start_ms or 0.0
        if self._started is not None:
            start_ms = self._started.audio_start_ms
        begin = max(self._keep_from(start_ms), self._buffer_start)
        until = min(self._byte_at(until_ms), self._received)
        pcm = bytes(self._buffer[begin - self._buffer_start : until - self._buffer_start])
        self._started = None
        return Utterance(round(start_ms), end_ms, pcm, self._ms_at(self._received))

    def _trim(self) -> None:
        start_ms = self._segmenter.candidate_start_ms
        if start_ms is None:
            keep = self._received - self._byte_at(self.settings.prefix_padding_ms + _LOOK_BEHIND_MS)
        else:
            keep = self._keep_from(start_ms)
        drop = min(keep, self._received) - self._buffer_start
        if drop > 0:
            del self._buffer[:drop]
            self._buffer_start += drop

    def take(self) -> Utterance | None:
        """The speech under way (confirmed or not), cut now: the client committed by hand."""
        if self._segmenter.candidate_start_ms is None:
            return None
        utterance = self._cut(self._ms_at(self._received), self._ms_at(self._received))
        self._segmenter.reset()
        return utterance

    def drop(self) -> None:
        """Forget the speech under way (echo guard, clear_audio); listening goes on."""
        self._segmenter.reset()
        self._started = None
        self._trim()
