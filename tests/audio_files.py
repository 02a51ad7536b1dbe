"""Recordings as phones and browsers make them, encoded by PyAV from the offline voice's speech, and the
measures the codec tests compare answers with."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from service.offline.speech import synthesize

RATE = 24_000


@dataclass(frozen=True)
class InputKind:
    """How one kind of recording is made: container, codec, its rate and channels."""

    container: str
    codec: str
    rate: int
    channels: int


# What each client records: iOS/Android voice notes (m4a), Chrome (webm), Firefox/Android (ogg), and files.
INPUT_KINDS: dict[str, InputKind] = {
    "m4a-aac-44k-stereo": InputKind("ipod", "aac", 44_100, 2),
    "webm-opus-48k-mono": InputKind("webm", "libopus", 48_000, 1),
    "ogg-opus-48k-stereo": InputKind("ogg", "libopus", 48_000, 2),
    "ogg-vorbis-44k-stereo": InputKind("ogg", "vorbis", 44_100, 2),  # FFmpeg encodes Vorbis in stereo only
    "flac-16k-mono": InputKind("flac", "flac", 16_000, 1),
    "mp3-44k-mono": InputKind("mp3", "libmp3lame", 44_100, 1),
    "wav-8k-stereo-s16": InputKind("wav", "pcm_s16le", 8_000, 2),
    "wav-48k-mono-f32": InputKind("wav", "pcm_f32le", 48_000, 1),
    "wav-16k-mono-s24": InputKind("wav", "pcm_s24le", 16_000, 1),
}

# Lowest SNR (dB) of each answer format against the pcm16 answer. Lossy codecs keep the waveform only
# roughly (on the offline voice: AAC 13.5 to 19.6, MP3 about 22, Opus about 10.5); a different stretch of
# the same speech scores below 0 (asserted in test_codecs), so these show it is the same speech.
MIN_SNR_DB = {"opus": 7.0, "webm_opus": 7.0, "aac": 10.0, "mp3": 10.0, "flac": 90.0, "wav": 90.0}

# The longest codec frame among the inputs (AAC: 1024 samples at 44.1 kHz, MP3: 1152), in ms, plus the
# rounding of a millisecond count: the tolerance on a recording's decoded duration.
ONE_FRAME_MS = 1152 * 1000 // 44_100 + 1


@functools.cache
def speech(text: str = "Is a golden retriever a good family dog?") -> bytes:
    """The offline voice saying `text`: 24 kHz mono pcm16."""
    return synthesize(text, "alloy")


def pcm_ms(pcm: bytes) -> int:
    """Milliseconds in 24 kHz mono pcm16."""
    return len(pcm) * 1000 // (2 * RATE)


def encode_recording(pcm: bytes, kind: InputKind, frame_samples: int = 4800) -> bytes:
    """`pcm` (24 kHz mono pcm16) as a file of `kind`, resampled and upmixed as a recorder would."""
    out = io.BytesIO()
    layout = "stereo" if kind.channels == 2 else "mono"
    with av.open(out, mode="w", format=kind.container) as container:
        stream = container.add_stream(kind.codec, rate=kind.rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)
        if kind.codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}  # FFmpeg's own Vorbis encoder
        resampler = av.AudioResampler(format="s16", layout=layout, rate=kind.rate)
        samples = np.frombuffer(pcm, dtype="<i2")
        for start in range(0, len(samples), frame_samples):
            piece = samples[start : start + frame_samples].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    container.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def decode_to_24k(data: bytes) -> npt.NDArray[np.int16]:
    """Any file PyAV reads, as 24 kHz mono int16 samples (a client's decoder)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    pieces: list[bytes] = []
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(audio=0):
            pieces.extend(bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame))
    pieces.extend(bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(None))
    return np.frombuffer(b"".join(pieces), dtype="<i2")


def snr_db(reference: npt.NDArray[np.int16], decoded: npt.NDArray[np.int16], max_lag: int = 4096) -> float:
    """SNR of `decoded` against `reference` in dB, at the codec delay (0..max_lag samples) that fits best."""
    ref = reference.astype(np.float64)
    out = decoded.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(ref) + len(out))))
    correlation = np.fft.irfft(np.fft.rfft(out, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(correlation[: max_lag + 1]))
    test = out[lag : lag + len(ref)]
    ref = ref[: len(test)]
    noise = float(np.sum((ref - test) ** 2))
    return float(10 * np.log10(float(np.sum(ref**2)) / max(noise, 1e-9)))
