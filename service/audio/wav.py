"""WAV headers and parsing, pcm16 arithmetic: pure functions."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MODEL_SAMPLE_RATE = 24_000

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Streaming writers that never patch their sizes leave one of these in the data chunk's size.
_UNPATCHED_SIZES = (0, 0xFFFFFFFF)


class AudioFormatError(ValueError):
    """The bytes are not audio in a format this module understands."""


@dataclass(frozen=True)
class WavInfo:
    """What a WAV file holds and where its samples are."""

    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int
    data_length: int
    format_tag: int = _WAVE_FORMAT_PCM

    @property
    def duration_seconds(self) -> float:
        """Seconds of audio in the data chunk."""
        return self.data_length / (self.sample_rate * self.channels * (self.bits_per_sample // 8))


def wav_header(num_data_bytes: int, sample_rate: int = MODEL_SAMPLE_RATE, channels: int = 1) -> bytes:
    """Return the standard 44-byte RIFF header of 16-bit PCM with `num_data_bytes` of samples."""
    if num_data_bytes < 0 or num_data_bytes > 0xFFFFFFFF - 36:
        raise ValueError(f"a WAV data chunk cannot hold {num_data_bytes} bytes")
    block_align = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + num_data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        16,
        b"data",
        num_data_bytes,
    )


def wrap_pcm16_as_wav(pcm: bytes, sample_rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """Return a whole mono WAV file holding the raw pcm16 samples `pcm`."""
    return wav_header(len(pcm), sample_rate) + pcm


def pcm16_duration_ms(num_bytes: int, sample_rate: int = MODEL_SAMPLE_RATE, channels: int = 1) -> float:
    """Milliseconds of audio in `num_bytes` of pcm16 (a trailing partial sample counts for nothing)."""
    if sample_rate <= 0 or channels <= 0:
        raise ValueError("sample_rate and channels must be positive")
    return (num_bytes // (2 * channels)) * 1000 / sample_rate


def parse_wav(data: bytes) -> WavInfo:
    """Walk a RIFF/WAVE file's chunks and describe its PCM or float samples; AudioFormatError if unusable."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a WAV file: it does not start with a RIFF/WAVE header")
    fmt: tuple[int, int, int, int] | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("WAV data chunk comes before its fmt chunk")
            available = len(data) - body
            if size in _UNPATCHED_SIZES:
                size = available
            elif size > available:
                raise AudioFormatError(f"WAV data chunk declares {size} bytes but only {available} follow")
            tag, channels, rate, bits = fmt
            return WavInfo(rate, channels, bits, body, size - size % (channels * bits // 8), tag)
        # Chunks are word-aligned: an odd-sized chunk is followed by a pad byte.
        offset = body + size + (size & 1)
    raise AudioFormatError("WAV file has no data chunk" if fmt else "WAV file has no fmt chunk")


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    """Return (format tag, channels, sample rate, bits per sample) from a fmt chunk body."""
    if len(body) < 16:
        raise AudioFormatError("WAV fmt chunk is truncated")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 26:
            raise AudioFormatError("WAV extensible fmt chunk is truncated")
        # The real format is the first two bytes of the sub-format GUID.
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
        raise AudioFormatError(f"WAV format tag {tag:#06x} is not PCM or IEEE float")
    if channels == 0 or rate == 0:
        raise AudioFormatError("WAV fmt chunk has zero channels or a zero sample rate")
    allowed_bits = (8, 16, 24, 32) if tag == _WAVE_FORMAT_PCM else (32, 64)
    if bits not in allowed_bits:
        raise AudioFormatError(f"WAV with {bits} bits per sample is not supported")
    return tag, channels, rate, bits
