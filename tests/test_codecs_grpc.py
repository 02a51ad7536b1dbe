"""Recordings in every accepted format, and answers in every output format, over gRPC (StreamTurn and a
streamed Converse) against the offline voice: real PyAV, real gRPC, the real openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from service.audio import parse_wav
from service.offline.server import OfflineVoiceServer
from tests.audio_files import (
    INPUT_KINDS,
    MIN_SNR_DB,
    ONE_FRAME_MS,
    decode_to_24k,
    encode_recording,
    pcm_ms,
    snr_db,
    speech,
)
from tests.conftest import RunningService, StartService
from tests.upstream_server import FixtureUpstream

OUTPUTS = {
    "opus": pb.AUDIO_ENCODING_OPUS,
    "webm_opus": pb.AUDIO_ENCODING_WEBM_OPUS,
    "aac": pb.AUDIO_ENCODING_AAC,
    "mp3": pb.AUDIO_ENCODING_MP3,
    "flac": pb.AUDIO_ENCODING_FLAC,
    "wav": pb.AUDIO_ENCODING_WAV,
}


@pytest.fixture
async def offline(start_service: StartService) -> AsyncIterator[RunningService]:
    async with OfflineVoiceServer() as voice:
        yield await start_service(base_url=voice.base_url)


def heard_seconds(transcript: str) -> float:
    """What the offline voice says it heard: 'I heard 2.1 seconds of audio'."""
    found = re.search(r"I heard ([0-9.]+) seconds", transcript)
    assert found, transcript
    return float(found.group(1))


async def turn_events(service: RunningService, request: pb.StreamTurnRequest) -> list[pb.TurnEvent]:
    return [event async for event in service.stub.StreamTurn(request)]


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
async def test_stream_turn_accepts_each_recording(offline: RunningService, kind: str) -> None:
    data = encode_recording(speech(), INPUT_KINDS[kind])
    # The container is sniffed: the client need not (and here does not) name it.
    request = pb.StreamTurnRequest(input=pb.UserMessage(audio=pb.AudioInput(data=data)))
    events = await turn_events(offline, request)
    assert abs(events[0].started.input_audio_ms - pcm_ms(speech())) <= ONE_FRAME_MS
    # mp3 reaches the model untouched, and the offline voice counts its frames, LAME's delay and padding too.
    tolerance = 0.12 if kind.startswith("mp3") else 0.051
    assert heard_seconds(events[-1].completed.transcript) == pytest.approx(
        pcm_ms(speech()) / 1000, abs=tolerance
    )


@pytest.mark.parametrize("kind", ["webm-opus-48k-mono", "ogg-opus-48k-stereo", "m4a-aac-44k-stereo"])
async def test_converse_decodes_a_recording_streamed_in_pieces(offline: RunningService, kind: str) -> None:
    data = encode_recording(speech(), INPUT_KINDS[kind])
    piece = len(data) // 8 + 1  # ~250 ms of a 2 s recording, as MediaRecorder(timeslice=250) sends it

    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(config=pb.ConverseConfig())
        label = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WEBM_OPUS)  # names one container for all: sniffed
        for start in range(0, len(data), piece):
            yield pb.ConverseRequest(audio=pb.AudioChunk(data=data[start : start + piece], format=label))
        yield pb.ConverseRequest(commit=pb.Commit())

    call = offline.stub.Converse(requests())
    events: list[pb.TurnEvent] = []
    async for response in call:
        if response.HasField("event"):
            events.append(response.event)
            if response.event.HasField("completed"):
                break
    call.cancel()
    assert abs(events[0].started.input_audio_ms - pcm_ms(speech())) <= ONE_FRAME_MS
    assert heard_seconds(events[-1].completed.transcript) == pytest.approx(pcm_ms(speech()) / 1000, abs=0.051)


async def test_converse_refuses_an_unreadable_recording_by_name(offline: RunningService) -> None:
    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(config=pb.ConverseConfig())
        label = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_OPUS)
        yield pb.ConverseRequest(audio=pb.AudioChunk(data=b"OggS" + bytes(4000), format=label))
        yield pb.ConverseRequest(commit=pb.Commit())

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in offline.stub.Converse(requests()):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unreadable recording" in (raised.value.details() or "")


async def _answer(service: RunningService, encoding: pb.AudioEncoding.ValueType) -> list[pb.TurnEvent]:
    config = pb.TurnConfig(output_audio_format=pb.AudioFormat(encoding=encoding))
    request = pb.StreamTurnRequest(config=config, input=pb.UserMessage(text="Say something about dogs."))
    return await turn_events(service, request)


@pytest.mark.parametrize("name", sorted(OUTPUTS))
async def test_each_output_format_decodes_to_the_answer(offline: RunningService, name: str) -> None:
    pcm_events = await _answer(offline, pb.AUDIO_ENCODING_PCM16)
    reference = np.frombuffer(b"".join(e.audio.data for e in pcm_events if e.HasField("audio")), "<i2")
    events = await _answer(offline, OUTPUTS[name])
    started, done = events[0].started, events[-1].completed
    audio = [e.audio for e in events if e.HasField("audio")]
    assert started.audio_format.encoding == OUTPUTS[name]
    assert all(delta.format.encoding == OUTPUTS[name] for delta in audio)
    assert done.audio_samples == len(reference), "samples still count the 24 kHz source"
    assert sum(delta.samples for delta in audio) == done.audio_samples
    decoded = decode_to_24k(b"".join(delta.data for delta in audio))
    assert 0 <= len(decoded) - done.audio_samples <= 2304
    assert snr_db(reference, decoded) >= MIN_SNR_DB[name]
    if name not in ("aac", "mp3"):
        assert audio[0].samples == 0 and audio[0].data, "the codec header comes first, alone"


async def test_bitrate_is_applied(offline: RunningService) -> None:
    sizes = []
    for bitrate in (12_000, 48_000):
        config = pb.TurnConfig(
            output_audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MP3, bitrate_bps=bitrate)
        )
        request = pb.StreamTurnRequest(config=config, input=pb.UserMessage(text="Hello there."))
        events = await turn_events(offline, request)
        sizes.append(sum(len(e.audio.data) for e in events if e.HasField("audio")))
    assert sizes[1] > 2.5 * sizes[0]


async def test_history_recordings_reach_the_model_decoded(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    note = encode_recording(speech(), INPUT_KINDS["m4a-aac-44k-stereo"])
    earlier = pb.HistoryItem(user=pb.UserMessage(audio=pb.AudioInput(data=note)))
    request = pb.StreamTurnRequest(
        config=pb.TurnConfig(model="fixture/text_only"),
        history=[earlier, pb.HistoryItem(assistant=pb.AssistantMessage(text="Yes."))],
        input=pb.UserMessage(text="And then?"),
    )
    await turn_events(service, request)
    part = upstream.requests[-1]["messages"][0]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    info = parse_wav(base64.b64decode(part["input_audio"]["data"]))
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24_000, 1, 16)
    assert abs(info.duration_seconds * 1000 - pcm_ms(speech())) <= ONE_FRAME_MS


async def test_an_interrupted_opus_answer_stays_decodable(service: RunningService) -> None:
    config = pb.TurnConfig(
        model="slow/audio_no_finish_reason",
        output_audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_OPUS),
    )
    interrupt = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(config=pb.ConverseConfig(turn=config))
        yield pb.ConverseRequest(text=pb.TextInput(text="Tell me about dogs."))
        await interrupt.wait()
        yield pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=10))

    call = service.stub.Converse(requests())
    audio: list[pb.AudioDelta] = []
    done: pb.TurnCompleted | None = None
    async for response in call:
        event = response.event
        if event.HasField("audio"):
            audio.append(event.audio)
            if len(audio) == 3:  # the header and some speech
                interrupt.set()
        elif event.HasField("completed"):
            done = event.completed
            break
    call.cancel()
    assert done is not None and done.reason == pb.FINISH_REASON_INTERRUPTED
    assert audio[0].samples == 0 and audio[0].data.startswith(b"OggS")
    assert sum(delta.samples for delta in audio) <= done.audio_samples
    decoded = decode_to_24k(b"".join(delta.data for delta in audio))
    assert 0 < len(decoded) <= done.audio_samples, "what arrived plays, cut at a page boundary"


async def test_converse_history_recordings_reach_the_model_decoded(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    note = encode_recording(speech(), INPUT_KINDS["ogg-vorbis-44k-stereo"])
    config = pb.ConverseConfig(
        turn=pb.TurnConfig(model="fixture/text_only"),
        history=[pb.HistoryItem(user=pb.UserMessage(audio=pb.AudioInput(data=note)))],
    )

    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(config=config)
        yield pb.ConverseRequest(text=pb.TextInput(text="And then?"))

    call = service.stub.Converse(requests())
    async for response in call:
        if response.HasField("event") and response.event.HasField("completed"):
            break
    call.cancel()
    part = upstream.requests[-1]["messages"][0]["content"][0]
    info = parse_wav(base64.b64decode(part["input_audio"]["data"]))
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24_000, 1, 16)
    assert abs(info.duration_seconds * 1000 - pcm_ms(speech())) <= ONE_FRAME_MS
