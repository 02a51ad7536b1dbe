"""The answer's 24 kHz mono pcm16 encoded as it arrives: Opus (Ogg, WebM), AAC (ADTS), MP3, FLAC, WAV.

An `Encoder` is fed pcm16 in pieces of any size and hands back the bytes each piece completes, so a client
can start decoding while the answer is still being spoken: `header()` first (container and codec setup,
empty for ADTS and MP3 whose frames carry their own), then `encode()` per piece, then `flush()` for the
codec's last frames. The muxers write to memory and never seek, so nothing is patched after the fact:
lengths a container would record at the end (Ogg granule totals aside) stay "unknown", which every
streaming player accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

from service.audio.wav import MODEL_SAMPLE_RATE

OutputEncoding = Literal["pcm16", "wav", "opus", "webm_opus", "aac", "mp3", "flac"]

MIN_BITRATE_BPS = 6_000
MAX_BITRATE_BPS = 320_000


@dataclass(frozen=True, slots=True)
class _Codec:
    container: str
    codec: str
    default_bitrate_bps: int  # 0: lossless, no bitrate
    container_options: dict[str, str]


# Speech defaults: Opus speaks clearly at 24 kbit/s; AAC-LC and MP3 need about twice that for the same.
# Ogg pages and WebM clusters are closed after every 20 ms so that a frame leaves as soon as it is made;
# that framing costs about 10 kbit/s (Ogg) and 6 kbit/s (WebM) on top (make bench: benchmarks/codecs.py).
_CODECS: dict[str, _Codec] = {
    "opus": _Codec("ogg", "libopus", 24_000, {"page_duration": "20000"}),
    "webm_opus": _Codec("webm", "libopus", 24_000, {"live": "1", "cluster_time_limit": "20"}),
    "aac": _Codec("adts", "aac", 48_000, {}),
    "mp3": _Codec("mp3", "libmp3lame", 48_000, {"id3v2_version": "0", "write_xing": "0"}),
    "flac": _Codec("flac", "flac", 0, {}),
}

# Media types a client can label the concatenated bytes with (HTTP Content-Type, Media Source).
MEDIA_TYPES: dict[str, str] = {
    "pcm16": "audio/pcm;rate=24000;channels=1",
    "wav": "audio/wav",
    "opus": "audio/ogg; codecs=opus",
    "webm_opus": "audio/webm; codecs=opus",
    "aac": "audio/aac",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
}


class _MemorySink:
    """A write-only file object for the muxer; no `seek`, so FFmpeg treats the output as a live stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def streaming_wav_header() -> bytes:
    """A 44-byte WAV header for 24 kHz mono pcm16 of unknown length (sizes 0xFFFFFFFF, as live writers do)."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        MODEL_SAMPLE_RATE,
        MODEL_SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        0xFFFFFFFF,
    )


class Encoder:
    """Encodes one answer. Not thread-safe; one per turn.

    Raises ValueError for an unknown encoding or a bitrate outside MIN_BITRATE_BPS..MAX_BITRATE_BPS.
    """

    def __init__(self, encoding: OutputEncoding, bitrate_bps: int = 0) -> None:
        self.encoding = encoding
        self.samples_in = 0  # 24 kHz source samples fed so far
        self._odd = b""  # a trailing half sample, kept for the next piece
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        self._sink = _MemorySink()
        if encoding in ("pcm16", "wav"):
            return
        spec = _CODECS.get(encoding)
        if spec is None:
            raise ValueError(f"unknown output encoding {encoding!r}")
        if bitrate_bps and not MIN_BITRATE_BPS <= bitrate_bps <= MAX_BITRATE_BPS:
            raise ValueError(f"bitrate must be between {MIN_BITRATE_BPS} and {MAX_BITRATE_BPS} bit/s")
        container = av.open(self._sink, mode="w", format=spec.container, options=spec.container_options)
        stream = container.add_stream(spec.codec, rate=MODEL_SAMPLE_RATE, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        if spec.default_bitrate_bps:
            stream.codec_context.bit_rate = bitrate_bps or spec.default_bitrate_bps
        if spec.codec == "libopus":
            stream.codec_context.options = {"application": "voip"}
        self._container, self._stream = container, stream

    def header(self) -> bytes:
        """Container and codec setup that must come first (empty for pcm16, ADTS and MP3)."""
        if self.encoding == "wav":
            return streaming_wav_header()
        if self._container is None:
            return b""
        self._container.start_encoding()
        return self._sink.take()

    def encode(self, pcm: bytes) -> bytes:
        """Feed the next pcm16 bytes; return the encoded bytes they complete (maybe none yet)."""
        pcm = self._odd + pcm
        whole = len(pcm) - len(pcm) % 2
        self._odd = pcm[whole:]
        self.samples_in += whole // 2
        if self._stream is None or self._container is None:
            return pcm[:whole]
        if not whole:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2", count=whole // 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = MODEL_SAMPLE_RATE
        frame.pts = self.samples_in - whole // 2
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def flush(self) -> bytes:
        """End the answer: the codec's last frames and the container's trailer; closes the encoder."""
        if self._stream is None or self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self.close()
        return self._sink.take()

    def close(self) -> None:
        """Free the codec (idempotent); an answer cut short needs no flush."""
        if self._container is not None:
            container, self._container, self._stream = self._container, None, None
            container.close()
