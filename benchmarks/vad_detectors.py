"""The detectors the evaluation compares with Silero: WebRTC's GMM VAD and a plain energy detector.

Each has the shape of service.vad.silero.SileroStream (`frame_ms`, `feed(pcm16) -> probabilities`), so
all of them drive the same Segmenter with the same settings.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
import soxr
import webrtcvad

_WEBRTC_RATES: Final = (8_000, 16_000, 32_000, 48_000)
_WEBRTC_FRAME_MS: Final = 30


class FrameDetector(Protocol):
    """Speech probability per fixed-length frame of a pcm16 stream."""

    @property
    def frame_ms(self) -> float:
        """Duration of one frame in milliseconds."""

    def feed(self, pcm16: bytes) -> list[float]:
        """Probabilities (0..1) of the frames this chunk completes."""


class _Framer:
    """Cuts a pcm16 stream (resampled if needed) into frames of `frame` samples."""

    def __init__(self, in_rate: int, out_rate: int, frame: int) -> None:
        self._resampler = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")
        )
        self._frame = frame
        self._pending = np.zeros(0, dtype=np.int16)

    def frames(self, pcm16: bytes) -> list[np.ndarray]:
        samples = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        pending = np.concatenate((self._pending, samples))
        count = len(pending) // self._frame
        self._pending = pending[count * self._frame :].copy()
        return [pending[i * self._frame : (i + 1) * self._frame] for i in range(count)]


class WebRtcStream:
    """webrtcvad (the py-webrtcvad wheel) in `mode` 0..3, 30 ms frames; 0 or 1 per frame."""

    frame_ms = float(_WEBRTC_FRAME_MS)

    def __init__(self, sample_rate_hz: int, mode: int = 3) -> None:
        self._rate = sample_rate_hz if sample_rate_hz in _WEBRTC_RATES else 16_000
        self._vad = webrtcvad.Vad(mode)
        self._framer = _Framer(sample_rate_hz, self._rate, self._rate * _WEBRTC_FRAME_MS // 1000)

    def feed(self, pcm16: bytes) -> list[float]:
        return [
            float(self._vad.is_speech(f.astype("<i2").tobytes(), self._rate))
            for f in self._framer.frames(pcm16)
        ]


class EnergyStream:
    """Level above an adaptive noise floor, 20 ms frames; 0 or 1 per frame.

    The floor follows the quietest recent level: it drops at once and rises 3 dB per second, so steady
    noise is learnt in a few seconds and speech (louder than the floor by `margin_db`) is not.
    """

    frame_ms = 20.0

    def __init__(self, sample_rate_hz: int, margin_db: float = 10.0, min_dbfs: float = -55.0) -> None:
        self._framer = _Framer(sample_rate_hz, sample_rate_hz, sample_rate_hz // 50)
        self._margin = margin_db
        self._min = min_dbfs
        self._floor: float | None = None

    def feed(self, pcm16: bytes) -> list[float]:
        out: list[float] = []
        for frame in self._framer.frames(pcm16):
            rms = float(np.sqrt(np.mean((frame.astype(np.float64) / 32768.0) ** 2)) + 1e-9)
            level = 20 * np.log10(rms)
            floor = level if self._floor is None else min(level, self._floor + 3.0 * self.frame_ms / 1000)
            self._floor = floor
            out.append(float(level > max(floor + self._margin, self._min)))
        return out
