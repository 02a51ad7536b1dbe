"""Recorded speech in any accepted container decoded to the model's input: 24 kHz mono pcm16.

`decode_file` takes a whole file; `StreamDecoder` takes a recording in pieces as it is made (a browser's
MediaRecorder sends WebM every ~250 ms) and decodes while it arrives, on a thread of its own reading from
a pipe, so that the end of the recording costs only the last piece's decode. Both are bounded: the
decoded duration (a tiny file can claim an hour) and the time spent decoding. Every failure is an
AudioFormatError (or its DecodeLimit subclass) whose message names the problem.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import av.error

from service.audio.sniff import DEMUXERS, SNIFF_BYTES, Container, describe_unsupported, sniff
from service.audio.wav import MODEL_SAMPLE_RATE, AudioFormatError

# Codecs accepted inside the containers: what phones and browsers record, and PCM in WAV.
ACCEPTED_CODECS = frozenset(
    {"aac", "opus", "vorbis", "flac", "mp3", "mp3float", "alac"}
    | {
        f"pcm_{kind}"
        for kind in ("u8", "s16le", "s16be", "s24le", "s32le", "f32le", "f64le", "alaw", "mulaw")
    }
)
# A container that says it holds more than this much more than could be decoded was cut short.
_TRUNCATION_TOLERANCE_SECONDS = 0.25


class DecodeLimit(AudioFormatError):
    """Decoding stopped because the audio is longer than the limit once decoded."""


class DecodeTimeout(AudioFormatError):
    """Decoding took longer than its time limit."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on one recording's decode."""

    max_seconds: float = 300.0  # decoded duration
    max_decode_seconds: float = 10.0  # wall time spent decoding


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded recording: 24 kHz mono pcm16, and what it was."""

    pcm: bytes
    container: Container
    codec: str

    @property
    def samples(self) -> int:
        """Samples at 24 kHz."""
        return len(self.pcm) // 2

    @property
    def duration_ms(self) -> int:
        """Milliseconds of audio."""
        return self.samples * 1000 // MODEL_SAMPLE_RATE


def container_of(data: bytes) -> Container:
    """The container sniffed from `data`'s first bytes; AudioFormatError naming what it is if refused."""
    if not data:
        raise AudioFormatError("the audio is empty (zero bytes)")
    found = sniff(data[:SNIFF_BYTES])
    if found is None:
        raise AudioFormatError(
            f"{describe_unsupported(data[:SNIFF_BYTES])} is not a supported format:"
            " send wav, mp3, m4a (AAC), webm or ogg (Opus, Vorbis), flac, or raw pcm16"
        )
    return found


def decode_file(data: bytes, limits: DecodeLimits) -> Decoded:
    """Decode a whole file to 24 kHz mono pcm16."""
    container = container_of(data)
    deadline = time.monotonic() + limits.max_decode_seconds
    return _decode(io.BytesIO(data), container, limits, lambda: deadline)


# The deadline is read at every packet: a streamed recording's clock starts only when it ends.
Deadline = Callable[[], float]


def _decode(source: object, container: Container, limits: DecodeLimits, deadline: Deadline) -> Decoded:
    try:
        with av.open(source, format=DEMUXERS[container], mode="r") as opened:
            if not opened.streams.audio:
                raise AudioFormatError(f"the {container} file holds no audio stream")
            stream = opened.streams.audio[0]
            codec = stream.codec_context.name
            if codec not in ACCEPTED_CODECS:
                raise AudioFormatError(f"{codec} audio in {container} is not supported")
            pcm = b"".join(_pcm_pieces(opened, stream, container, limits, deadline))
            declared = _declared_seconds(stream, opened)
    except av.error.FFmpegError as exc:
        raise AudioFormatError(f"corrupt or truncated {container}: {exc.strerror or exc}") from None
    if not pcm:
        raise AudioFormatError(f"the {container} file holds no decodable audio (empty, corrupt or truncated)")
    decoded = Decoded(pcm, container, codec)
    if (
        declared is not None
        and declared - decoded.samples / MODEL_SAMPLE_RATE > _TRUNCATION_TOLERANCE_SECONDS
    ):
        raise AudioFormatError(
            f"truncated {container}: it declares {declared:.2f} s but only"
            f" {decoded.samples / MODEL_SAMPLE_RATE:.2f} s could be decoded"
        )
    return decoded


def _pcm_pieces(
    opened: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    container: Container,
    limits: DecodeLimits,
    deadline: Deadline,
) -> Iterator[bytes]:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=MODEL_SAMPLE_RATE)
    max_samples = int(limits.max_seconds * MODEL_SAMPLE_RATE)
    samples = 0
    for packet in opened.demux(stream):
        if time.monotonic() > deadline():
            raise DecodeTimeout(f"decoding the {container} took longer than {limits.max_decode_seconds:g} s")
        # packet is None-sized at the end of the demux: decode() then flushes the decoder.
        for frame in packet.decode():
            for out in resampler.resample(frame):
                samples += out.samples
                if samples > max_samples:
                    raise DecodeLimit(
                        f"the {container} decodes to more than the limit of {limits.max_seconds:g} s"
                    )
                yield bytes(out.planes[0])[: out.samples * 2]
    for out in resampler.resample(None):
        yield bytes(out.planes[0])[: out.samples * 2]


def _declared_seconds(
    stream: av.audio.stream.AudioStream, opened: av.container.InputContainer
) -> float | None:
    """The duration the container's index states (MP4 and FLAC have one; live WebM and Ogg do not)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


class _Pipe(io.RawIOBase):
    """A blocking, non-seekable reader fed from another thread; b"" at the end of the recording."""

    def __init__(self) -> None:
        super().__init__()
        self._pieces: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._current = b""
        self._ended = False

    def put(self, data: bytes | None) -> None:
        """Append bytes, or None for the end."""
        self._pieces.put(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._current and not self._ended:
            piece = self._pieces.get()
            if piece is None:
                self._ended = True
            else:
                self._current = piece
        if size < 0:
            size = len(self._current)
        data, self._current = self._current[:size], self._current[size:]
        return data


# Containers a StreamDecoder keeps whole: MP4 needs its index, which phones write last; WAV and MP3 may go
# to the model as they are, so they are not decoded here at all (see `kept_whole`).
KEPT_WHOLE: frozenset[Container] = frozenset({"m4a", "wav", "mp3"})


class StreamDecoder:
    """Decodes one recording sent in pieces, while it arrives; `finish()` at its end returns all of it.

    `feed` never blocks and raises the error of a decode that already failed, so a client learns at the
    next piece that its recording is unreadable. KEPT_WHOLE containers are only buffered.
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._head = b""  # the first bytes, kept until the container can be sniffed
        self._pipe: _Pipe | None = None
        self._whole: list[bytes] | None = None  # an m4a, decoded at the end
        self._thread: threading.Thread | None = None
        self._result: Decoded | AudioFormatError | None = None
        self._started_at = 0.0
        self._deadline = float("inf")

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the recording."""
        self._raise_failure()
        if self._pipe is not None:
            self._pipe.put(data)
            return
        if self._whole is not None:
            self._whole.append(data)
            return
        self._head += data
        if len(self._head) >= SNIFF_BYTES:
            self._begin()

    def _begin(self) -> None:
        head, self._head = self._head, b""
        container = container_of(head)
        if container in KEPT_WHOLE:
            self._whole = [head]
            return
        self._pipe = _Pipe()
        self._pipe.put(head)
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, args=(self._pipe, container), name="audio-decode", daemon=True
        )
        self._thread.start()

    def _run(self, pipe: _Pipe, container: Container) -> None:
        try:
            self._result = _decode(pipe, container, self._limits, lambda: self._deadline)
        except AudioFormatError as exc:
            self._result = exc
        except Exception as exc:  # a codec library bug must not end the process nor leave finish() waiting
            self._result = AudioFormatError(f"the {container} could not be decoded: {exc}")

    def _raise_failure(self) -> None:
        if isinstance(self._result, AudioFormatError):
            raise self._result

    def kept_whole(self) -> bytes | None:
        """The recording's bytes if its container is one of KEPT_WHOLE (decided by its first bytes)."""
        return b"".join(self._whole) if self._whole is not None else None

    def finish(self) -> Decoded:
        """The whole recording decoded; blocks for at most the decode time limit (call it off the loop)."""
        self._deadline = time.monotonic() + self._limits.max_decode_seconds
        if self._pipe is None and self._whole is None:
            if not self._head:
                raise AudioFormatError("the audio is empty (zero bytes)")
            self._begin()
        if self._whole is not None:
            return decode_file(b"".join(self._whole), self._limits)
        assert self._pipe is not None and self._thread is not None
        self._pipe.put(None)
        self._thread.join(self._limits.max_decode_seconds)
        if self._thread.is_alive():
            self._deadline = 0.0  # the thread stops at its next packet
            raise DecodeTimeout(
                f"decoding the recording took longer than {self._limits.max_decode_seconds:g} s"
            )
        self._raise_failure()
        assert isinstance(self._result, Decoded)
        return self._result

    def close(self) -> None:
        """Drop the recording: the decoding thread reads its end and stops."""
        self._deadline = 0.0
        if self._pipe is not None:
            self._pipe.put(None)
