"""The pure audio helpers: WAV headers and parsing, MP3 frame walking, pcm16 arithmetic."""

from __future__ import annotations

import contextlib
import io
import struct
import wave

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audio import (
    AudioFormatError,
    mp3_duration_seconds,
    parse_wav,
    pcm16_duration_ms,
    wav_header,
    wrap_pcm16_as_wav,
)

# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding: 417-byte frames of 1152 samples.
MPEG1_L3_HEADER = bytes([0xFF, 0xFB, 0x90, 0x00])
MPEG1_L3_FRAME = MPEG1_L3_HEADER + bytes(417 - 4)
# MPEG-2 Layer III, 64 kbit/s, 24 kHz, padded: 193-byte frames of 576 samples.
MPEG2_L3_HEADER = bytes([0xFF, 0xF3, 0x86, 0x00])
MPEG2_L3_FRAME = MPEG2_L3_HEADER + bytes(193 - 4)


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    pad = b"\0" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", len(body)) + body + pad


def _fmt(tag: int = 1, channels: int = 1, rate: int = 24000, bits: int = 16) -> bytes:
    align = channels * bits // 8
    return _chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits))


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _id3v2(size: int) -> bytes:
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + bytes(size)


def test_wav_header_is_the_standard_44_bytes() -> None:
    header = wav_header(48_000)
    assert len(header) == 44
    riff, fmt, data = struct.unpack("<4sI4s", header[:12]), header[12:36], header[36:]
    assert riff == (b"RIFF", 36 + 48_000, b"WAVE")
    assert struct.unpack("<4sIHHIIHH", fmt) == (b"fmt ", 16, 1, 1, 24_000, 48_000, 2, 16)
    assert struct.unpack("<4sI", data) == (b"data", 48_000)


def test_wav_header_rejects_sizes_a_wav_cannot_hold() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        wav_header(2**32)


def test_wrapped_pcm_reads_back_with_the_standard_library() -> None:
    pcm = bytes(range(256)) * 10
    with wave.open(io.BytesIO(wrap_pcm16_as_wav(pcm, 16_000))) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (16_000, 1, 2)
        assert reader.readframes(reader.getnframes()) == pcm


def test_parse_wav_reads_a_file_written_by_the_standard_library() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(8_000)
        writer.writeframes(bytes(8_000 * 4 * 3))
    info = parse_wav(buffer.getvalue())
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (8_000, 2, 16)
    assert info.duration_seconds == pytest.approx(3.0)


def test_parse_wav_walks_chunks_instead_of_assuming_data_at_44() -> None:
    samples = bytes(range(100))
    extra = _chunk(b"LIST", b"INFOsoftware")
    data = _riff(_chunk(b"JUNK", b"x" * 7), _fmt(), extra, _chunk(b"data", samples))
    info = parse_wav(data)
    assert info.data_offset != 44
    assert data[info.data_offset : info.data_offset + info.data_length] == samples
    assert info.duration_seconds == pytest.approx(50 / 24_000)


def test_parse_wav_accepts_extensible_and_float_formats() -> None:
    extensible = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 48_000, 192_000, 4, 32, 22, 32, 4)
    guid_tail = struct.pack("<H", 3) + bytes(14)
    data = _riff(_chunk(b"fmt ", extensible + guid_tail), _chunk(b"data", bytes(192_000)))
    info = parse_wav(data)
    assert (info.format_tag, info.bits_per_sample, info.duration_seconds) == (3, 32, 1.0)


def test_parse_wav_uses_the_rest_of_a_file_whose_sizes_were_never_patched() -> None:
    streamed = wav_header(0)[:-4] + struct.pack("<I", 0xFFFFFFFF) + bytes(4_800)
    assert parse_wav(streamed).data_length == 4_800


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RIFF/WAVE"),
        (b"RIFX" + bytes(40), "RIFF/WAVE"),
        (_riff(_chunk(b"data", bytes(10))), "before its fmt"),
        (_riff(_fmt()), "no data chunk"),
        (_riff(_chunk(b"LIST", b"abc")), "no fmt chunk"),
        (_riff(_fmt(tag=0x11)), "not PCM"),
        (_riff(_fmt(bits=12), _chunk(b"data", bytes(6))), "12 bits"),
        (_riff(_fmt(channels=0), _chunk(b"data", bytes(6))), "zero channels"),
        (_riff(_chunk(b"fmt ", bytes(10))), "truncated"),
        (_riff(_fmt(), b"data" + struct.pack("<I", 1000) + bytes(10)), "only 10 follow"),
    ],
)
def test_parse_wav_explains_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        parse_wav(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([8_000, 16_000, 24_000, 44_100]))
def test_parse_wav_round_trips_any_pcm(pcm: bytes, rate: int) -> None:
    info = parse_wav(wrap_pcm16_as_wav(pcm, rate))
    assert info.sample_rate == rate
    assert info.data_length == len(pcm) - len(pcm) % 2
    assert info.duration_seconds == pytest.approx(len(pcm) // 2 / rate)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_audio_format_error(data: bytes) -> None:
    for parse in (parse_wav, mp3_duration_seconds):
        with contextlib.suppress(AudioFormatError):
            parse(b"RIFF\0\0\0\0WAVE" + data if parse is parse_wav else data)


def test_mp3_duration_sums_mpeg1_frames_after_an_id3v2_tag() -> None:
    data = _id3v2(300) + MPEG1_L3_FRAME * 40 + b"TAG" + bytes(125)
    assert mp3_duration_seconds(data) == pytest.approx(40 * 1152 / 44_100)


def test_mp3_duration_handles_mpeg2_padding_and_junk_between_frames() -> None:
    data = MPEG2_L3_FRAME * 10 + b"\xff\x00junk" + MPEG2_L3_FRAME * 10
    assert mp3_duration_seconds(data) == pytest.approx(20 * 576 / 24_000)


def test_mp3_duration_ignores_a_truncated_last_frame() -> None:
    assert mp3_duration_seconds(MPEG1_L3_FRAME * 3 + MPEG1_L3_FRAME[:100]) == pytest.approx(3 * 1152 / 44_100)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16),
        bytes(5_000),
        MPEG1_L3_HEADER + b"\x12" * 1_000,  # one lookalike header followed by junk
        bytes([0xFF, 0xFB, 0xF0, 0x00]) * 500,  # bitrate index 15 is invalid
    ],
)
def test_mp3_duration_refuses_data_without_frames(data: bytes) -> None:
    with pytest.raises(AudioFormatError, match="no valid MPEG audio frame"):
        mp3_duration_seconds(data)


def test_pcm16_duration_ms() -> None:
    assert pcm16_duration_ms(48_000) == 1000.0
    assert pcm16_duration_ms(48_001) == 1000.0  # a trailing odd byte is not a sample
    assert pcm16_duration_ms(32_000, 16_000) == 1000.0
    assert pcm16_duration_ms(96_000, 24_000, channels=2) == 1000.0
    with pytest.raises(ValueError, match="positive"):
        pcm16_duration_ms(10, 0)
