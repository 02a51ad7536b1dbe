"""Server VAD turn detection: speech probabilities per frame in, speech started/stopped out.

Pure and clock-free: positions are milliseconds of input audio from the first byte of the stream, so a
stream fed faster or slower than real time gives the same events. A candidate becomes speech only after
`min_speech_duration_ms` of voiced frames (a cough or a click never becomes a turn, and never interrupts
an answer); speech ends after `silence_duration_ms` without a voiced frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

# Below the threshold by this much a frame counts as silence; in between it keeps the current state, so a
# probability hovering at the threshold does not flicker (the hysteresis Silero's own iterator uses).
HYSTERESIS: Final = 0.15


@dataclass(frozen=True, slots=True)
class VadSettings:
    """The server_vad settings of a conversation (the Realtime API's names), checked."""

    threshold: float = 0.5
    """Speech probability (0..1) from which a frame is voiced."""
    prefix_padding_ms: int = 300
    """Audio kept from before the detected start and committed with the speech."""
    silence_duration_ms: int = 500
    """Silence that ends speech (and commits the turn)."""
    min_speech_duration_ms: int = 250
    """Voiced audio needed before a start is confirmed: shorter sounds are not turns and do not interrupt."""
    echo_guard_ms: int = 0
    """Speech starting within this long after an answer's first audio is ignored (0 = off)."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Confirmed speech; `audio_start_ms` is where its first voiced frame began."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The end of confirmed speech; `audio_end_ms` is where its last voiced frame ended."""

    audio_end_ms: int


SpeechEvent = SpeechStarted | SpeechStopped


class _State(enum.Enum):
    SILENCE = "silence"
    CANDIDATE = "candidate"  # voiced, not yet long enough to be speech
    SPEECH = "speech"


class Segmenter:
    """Turns frame probabilities into speech events, one frame at a time."""

    def __init__(self, settings: VadSettings, frame_ms: float) -> None:
        self.settings = settings
        self._frame_ms = frame_ms
        self._frames = 0
        self._state = _State.SILENCE
        self._start_ms = 0.0
        self._voiced_ms = 0.0
        self._voiced_end_ms = 0.0

    @property
    def position_ms(self) -> float:
        """Milliseconds of audio judged so far."""
        return self._frames * self._frame_ms

    @property
    def candidate_start_ms(self) -> float | None:
        """Start of the candidate or confirmed speech under way, None in silence."""
        return None if self._state is _State.SILENCE else self._start_ms

    @property
    def in_speech(self) -> bool:
        """Whether confirmed speech is under way."""
        return self._state is _State.SPEECH

    def reset(self) -> None:
        """Forget any speech under way (the echo guard drops it); positions keep counting."""
        self._state = _State.SILENCE
        self._voiced_ms = 0.0

    def push(self, probability: float) -> SpeechEvent | None:
        """Judge the next frame; returns the event it completes, if any."""
        start = self.position_ms
        self._frames += 1
        threshold = self.settings.threshold
        if probability >= threshold:
            if self._state is _State.SILENCE:
                self._state, self._start_ms, self._voiced_ms = _State.CANDIDATE, start, 0.0
            self._voiced_ms += self._frame_ms
            self._voiced_end_ms = self.position_ms
            if self._state is _State.CANDIDATE and self._voiced_ms >= self.settings.min_speech_duration_ms:
                self._state = _State.SPEECH
                return SpeechStarted(round(self._start_ms))
            return None
        # A frame between the two thresholds neither extends the speech nor, alone, ends it.
        if self._state is _State.SILENCE or probability >= threshold - HYSTERESIS:
            return None
        if self.position_ms - self._voiced_end_ms < self.settings.silence_duration_ms:
            return None
        ended = self._state
        self.reset()
        return SpeechStopped(round(self._voiced_end_ms)) if ended is _State.SPEECH else None
