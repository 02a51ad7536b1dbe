"""service/audio with real codecs (PyAV): every accepted recording decodes, every answer format encodes
incrementally and decodes back to the same speech; bad files are refused by name, never hang."""

from __future__ import annotations

import numpy as np
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from service.answer_audio import AnswerEncoder
from service.audio import AudioFormatError
from service.audio.decode import DecodeLimit, DecodeLimits, DecodeTimeout, StreamDecoder, decode_file
from service.audio.encode import Encoder, OutputEncoding
from tests.audio_files import (
    INPUT_KINDS,
    MIN_SNR_DB,
    ONE_FRAME_MS,
    RATE,
    decode_to_24k,
    encode_recording,
    pcm_ms,
    snr_db,
    speech,
)

LIMITS = DecodeLimits()
# Samples a decoder may add beyond the source: AAC primes 1024 and pads its last frame, LAME likewise.
EXTRA_SAMPLES: dict[OutputEncoding, int] = {"aac": 2048, "mp3": 2 * 1152}


@pytest.fixture(scope="module", params=sorted(INPUT_KINDS))
def recording(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    return request.param, encode_recording(speech(), INPUT_KINDS[request.param])


def test_each_recording_decodes_to_its_duration(recording: tuple[str, bytes]) -> None:
    name, data = recording
    decoded = decode_file(data, LIMITS)
    assert abs(decoded.duration_ms - pcm_ms(speech())) <= ONE_FRAME_MS, name
    assert snr_db(np.frombuffer(speech(), "<i2"), np.frombuffer(decoded.pcm, "<i2")) > 5.0, name


def test_streamed_recording_in_pieces_decodes_like_the_whole_file(recording: tuple[str, bytes]) -> None:
    name, data = recording
    decoder = StreamDecoder(LIMITS)
    piece = max(len(data) // 9, 5)  # like MediaRecorder's 250 ms slices; the first is shorter than a header
    for start in range(0, len(data), piece):
        decoder.feed(data[start : start + piece])
    streamed = decoder.finish()
    assert abs(streamed.duration_ms - decode_file(data, LIMITS).duration_ms) <= ONE_FRAME_MS, name


@pytest.mark.parametrize("kind", ["webm-opus-48k-mono", "flac-16k-mono"])
def test_decoded_duration_limit(kind: str) -> None:
    data = encode_recording(speech(), INPUT_KINDS[kind])
    with pytest.raises(DecodeLimit, match="more than the limit of 1 s"):
        decode_file(data, DecodeLimits(max_seconds=1.0))
    decoder = StreamDecoder(DecodeLimits(max_seconds=1.0))
    decoder.feed(data)
    with pytest.raises(DecodeLimit, match="more than the limit of 1 s"):
        decoder.finish()


def test_decode_time_limit() -> None:
    data = encode_recording(speech(), INPUT_KINDS["ogg-opus-48k-stereo"])
    with pytest.raises(DecodeTimeout, match="took longer than 0 s"):
        decode_file(data, DecodeLimits(max_decode_seconds=0.0))


@pytest.mark.parametrize(
    ("kind", "cut", "words"),
    [
        ("m4a-aac-44k-stereo", 0.5, "corrupt or truncated m4a"),
        ("flac-16k-mono", 0.5, "truncated flac"),
        # Ogg and WebM are streams with no length up front: cut between pages, they are a shorter recording;
        # cut inside the headers, they are refused.
        ("ogg-opus-48k-stereo", 0.001, "ogg"),
        ("webm-opus-48k-mono", 0.001, "webm"),
        ("wav-48k-mono-f32", 0.5, "truncated wav"),
    ],
)
def test_truncated_files_are_refused_by_name(kind: str, cut: float, words: str) -> None:
    data = encode_recording(speech(), INPUT_KINDS[kind])
    with pytest.raises(AudioFormatError, match=words):
        decode_file(data[: max(int(len(data) * cut), 20)], LIMITS)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"#!AMR\n" + bytes(200), "amr audio is not a supported format"),
        (b"plain text, not audio at all", "unrecognised data starting with 70 6c 61 69"),
        (b"OggS" + bytes(300), "ogg"),
        (b"\x1a\x45\xdf\xa3" + bytes(300), "webm"),
        (b"fLaC" + bytes(10), "flac"),
    ],
)
def test_unsupported_and_corrupt_bytes_are_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(AudioFormatError, match=words):
        decode_file(data, LIMITS)
    with pytest.raises(AudioFormatError, match=words):
        _stream(data)


def _stream(data: bytes) -> None:
    decoder = StreamDecoder(LIMITS)
    decoder.feed(data)
    decoder.finish()


def test_a_recording_that_goes_bad_midway_fails_at_its_end_not_hangs() -> None:
    data = encode_recording(speech(), INPUT_KINDS["m4a-aac-44k-stereo"])
    decoder = StreamDecoder(LIMITS)
    decoder.feed(data[: len(data) // 2])
    decoder.feed(bytes(5000))
    with pytest.raises(AudioFormatError, match="m4a"):
        decoder.finish()


def test_a_dropped_recording_stops_its_decoder() -> None:
    decoder = StreamDecoder(LIMITS)
    decoder.feed(encode_recording(speech(), INPUT_KINDS["webm-opus-48k-mono"])[:3000])
    decoder.close()
    assert decoder._thread is not None
    decoder._thread.join(5)
    assert not decoder._thread.is_alive()


def _encode(encoding: OutputEncoding, pcm: bytes, piece: int = 4801) -> tuple[bytes, bytes, bytes]:
    """(header, body, first piece's output) of `pcm` fed in odd-sized pieces."""
    encoder = Encoder(encoding)
    header = encoder.header()
    parts = [encoder.encode(pcm[start : start + piece]) for start in range(0, len(pcm), piece)]
    parts.append(encoder.flush())
    return header, b"".join(parts), parts[0]


@pytest.mark.parametrize("encoding", sorted(MIN_SNR_DB))
def test_each_output_decodes_to_the_same_speech(encoding: OutputEncoding) -> None:
    pcm = speech()
    reference = np.frombuffer(pcm, "<i2")
    header, body, _ = _encode(encoding, pcm)
    decoded = decode_to_24k(header + body)
    extra = len(decoded) - len(reference)
    assert 0 <= extra <= EXTRA_SAMPLES.get(encoding, 0), (encoding, extra)
    assert snr_db(reference, decoded) >= MIN_SNR_DB[encoding]
    assert snr_db(np.roll(reference, RATE // 5), decoded) < 0.0, "the measure tells other speech apart"
    if encoding in ("aac", "mp3"):
        assert header == b"", "ADTS and MP3 frames carry their own headers"
    else:
        assert header, "container and codec setup come first"


@pytest.mark.parametrize("encoding", ["opus", "webm_opus", "aac", "mp3"])
def test_encoding_is_incremental(encoding: OutputEncoding) -> None:
    pcm = speech()
    _, body, first = _encode(encoding, pcm, piece=RATE // 5 * 2)  # 200 ms, one upstream chunk's worth
    assert first, "the first 200 ms already leave as encoded bytes"
    assert len(body) < len(pcm) / 4, "and it is compressed"


def test_bitrate_changes_the_size() -> None:
    pcm = speech()
    sizes = []
    for bitrate in (16_000, 64_000):
        encoder = Encoder("opus", bitrate)
        sizes.append(len(encoder.header() + encoder.encode(pcm) + encoder.flush()))
    assert sizes[1] > sizes[0] * 2
    with pytest.raises(ValueError, match="bitrate"):
        Encoder("mp3", 1_000_000)


@pytest.mark.parametrize("encoding", [pb.AUDIO_ENCODING_OPUS, pb.AUDIO_ENCODING_AAC, pb.AUDIO_ENCODING_FLAC])
def test_answer_deltas_count_source_samples(encoding: pb.AudioEncoding.ValueType) -> None:
    pcm = speech()
    output = pb.AudioFormat(encoding=encoding, sample_rate_hz=RATE, channels=1)
    answer = AnswerEncoder(output)
    deltas: list[pb.AudioDelta] = []
    for start in range(0, len(pcm), 3001):  # odd: half samples carried over
        deltas += answer.feed(pb.AudioDelta(data=pcm[start : start + 3001]))
    deltas += answer.finish()
    assert [d.start_sample for d in deltas] == list(np.cumsum([0] + [d.samples for d in deltas[:-1]]))
    assert sum(d.samples for d in deltas) == len(pcm) // 2
    assert all(d.format == output for d in deltas)
    if encoding != pb.AUDIO_ENCODING_AAC:
        assert deltas[0].samples == 0, "the header delta carries no samples"
    decoded = decode_to_24k(b"".join(d.data for d in deltas))
    assert len(decoded) - len(pcm) // 2 in range(2049)
