"""Bad input gets the design table's status, and the server goes on serving well-formed calls."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import grpc
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from service.audio import wav_header
from tests.conftest import RunningService, StartService
from tests.events import Collected, text_request

PCM16_16K = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16_000)


def audio_request(data: bytes, audio_format: pb.AudioFormat) -> pb.StreamTurnRequest:
    return pb.StreamTurnRequest(
        config=pb.TurnConfig(model="fixture/text_only"),
        input=pb.UserMessage(audio=pb.AudioInput(data=data, format=audio_format)),
    )


async def stream_turn(service: RunningService, request: pb.StreamTurnRequest) -> None:
    async for _ in service.stub.StreamTurn(request):
        pass


async def converse(service: RunningService, *requests: pb.ConverseRequest) -> None:
    call = service.stub.Converse()
    for request in requests:
        await call.write(request)
    await call.done_writing()
    async for _ in call:
        pass


def converse_config() -> pb.ConverseRequest:
    return pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/text_only")))


AUDIO_CHUNK = pb.ConverseRequest(audio=pb.AudioChunk(data=b"\0\0" * 100, format=PCM16_16K))
CORRUPT_WAV = b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk"
Call = Callable[[RunningService], Awaitable[None]]

CASES: dict[str, tuple[Call, grpc.StatusCode, str]] = {
    "audio before config": (
        lambda s: converse(s, AUDIO_CHUNK),
        grpc.StatusCode.FAILED_PRECONDITION,
        "first message",
    ),
    "config twice": (
        lambda s: converse(s, converse_config(), converse_config()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "only accepted as the first",
    ),
    "unknown encoding": (
        lambda s: stream_turn(s, audio_request(b"\0\0", pb.AudioFormat(encoding=42))),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown audio encoding",
    ),
    "no encoding and no known container": (
        lambda s: stream_turn(s, audio_request(b"\0\0", pb.AudioFormat())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unreadable AUDIO: unrecognised data starting with 00 00 is not a supported format",
    ),
    "corrupt wav": (
        lambda s: stream_turn(s, audio_request(CORRUPT_WAV, pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WAV))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unreadable WAV",
    ),
    "corrupt wav over converse": (
        lambda s: converse(
            s,
            converse_config(),
            pb.ConverseRequest(
                audio=pb.AudioChunk(data=CORRUPT_WAV, format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WAV))
            ),
            pb.ConverseRequest(commit=pb.Commit()),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unreadable WAV",
    ),
    "garbage mp3": (
        lambda s: stream_turn(
            s, audio_request(b"not an mp3" * 50, pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MP3))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unreadable MP3",
    ),
    "odd pcm16": (
        lambda s: stream_turn(s, audio_request(b"\0\0\0", PCM16_16K)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "whole 16-bit samples",
    ),
    "pcm16 without rate": (
        lambda s: stream_turn(s, audio_request(b"\0\0", pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sample_rate_hz",
    ),
    "empty turn": (
        lambda s: stream_turn(s, text_request("fixture/text_only", "   ")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty turn",
    ),
    "commit with nothing recorded": (
        lambda s: converse(s, converse_config(), pb.ConverseRequest(commit=pb.Commit())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty turn",
    ),
    "empty converse message": (
        lambda s: converse(s, converse_config(), pb.ConverseRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty ConverseRequest",
    ),
    "non-streamable output format": (
        lambda s: stream_turn(
            s,
            pb.StreamTurnRequest(
                config=pb.TurnConfig(output_audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_M4A)),
                input=pb.UserMessage(text="hi"),
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output_audio_format.encoding m4a is not one of pcm16, wav, opus",
    ),
    "temperature out of range": (
        lambda s: stream_turn(
            s, pb.StreamTurnRequest(config=pb.TurnConfig(temperature=9), input=pb.UserMessage(text="hi"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
}


async def assert_still_serving(service: RunningService) -> None:
    collected = Collected()
    async for event in service.stub.StreamTurn(text_request("fixture/text_only")):
        collected.add(event)
    collected.assert_matches("text_only")


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_gets_its_status(service: RunningService, case: str) -> None:
    call, status, words = CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(service)
    assert raised.value.code() == status
    assert words in (raised.value.details() or "")
    await assert_still_serving(service)


async def test_audio_over_the_turn_limit_is_invalid_argument(start_service: StartService) -> None:
    service = await start_service(max_turn_audio_bytes=10_000)
    pcm = b"\1\0" * 6_000
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream_turn(service, audio_request(pcm, PCM16_16K))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit" in (raised.value.details() or "")
    # Over Converse the limit counts the whole recording, across chunks.
    chunk = pb.ConverseRequest(audio=pb.AudioChunk(data=b"\1\0" * 3_000, format=PCM16_16K))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await converse(service, converse_config(), chunk, chunk)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await assert_still_serving(service)


async def test_message_over_the_transport_limit_is_refused_by_grpc(start_service: StartService) -> None:
    service = await start_service(max_message_bytes=64 * 1024)
    wav = wav_header(100_000, 16_000) + b"\1\0" * 50_000
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream_turn(service, audio_request(wav, pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WAV)))
    # gRPC itself answers RESOURCE_EXHAUSTED before any handler runs (see README, "Limits").
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_still_serving(service)


async def test_valid_wav_of_any_layout_is_accepted(service: RunningService) -> None:
    # A WAV with an extra chunk before "data", as phones write them.
    pcm = struct.pack("<4h", 1, -1, 2, -2) * 4000
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    body += b"data" + struct.pack("<I", len(pcm)) + pcm
    wav = b"RIFF" + struct.pack("<I", len(body)) + body
    events = [
        e
        async for e in service.stub.StreamTurn(
            audio_request(wav, pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WAV))
        )
    ]
    assert events[0].started.input_audio_ms == 1000
