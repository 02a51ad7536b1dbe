"""Server VAD over a real Converse stream: turns committed by silence, barge-in by voice, no false turns."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from typing import Any

import grpc
import numpy as np
import pytest
import soxr
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from audiochat.v1 import audiochat_pb2 as pb
from service.conversation import heard_part
from tests.conftest import RunningService
from tests.speech import chunks, ms_of, silence, utterance, white_noise
from tests.upstream_server import FixtureUpstream

FORMAT = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000)
FIRST = "What time does the train to Boston leave tomorrow?"
SECOND = "And how long does the trip take?"
ANSWER = "Yes, a golden retriever is a wonderful family dog."
ANSWER_MS = 133904 * 1000 // 48000


def server_vad(model: str, **detection: Any) -> pb.ConverseRequest:
    turn_detection = pb.TurnDetection(type=pb.TURN_DETECTION_TYPE_SERVER_VAD, **detection)
    config = pb.ConverseConfig(turn=pb.TurnConfig(model=model), turn_detection=turn_detection)
    return pb.ConverseRequest(config=config)


async def open_hands_free(service: RunningService, model: str, **detection: Any) -> Any:
    call = service.stub.Converse()
    await call.write(server_vad(model, **detection))
    assert (await call.read()).started.conversation_id
    return call


class Stream:
    """Writes audio to a call as a microphone would, remembering how much was sent."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.sent = 0

    async def send(self, pcm16: bytes) -> None:
        for piece in chunks(pcm16):
            audio = pb.AudioChunk(data=piece, format=FORMAT if self.sent == 0 else None)
            await self.call.write(pb.ConverseRequest(audio=audio))
            self.sent += len(piece)

    @property
    def ms(self) -> float:
        return ms_of(b"\0" * self.sent)


async def read_until(call: Any, kind: str, turn_kind: str | None = None) -> list[pb.ConverseResponse]:
    """Responses up to and including the first of `kind` (and, for events, of `turn_kind`)."""
    seen: list[pb.ConverseResponse] = []
    while True:
        response = await call.read()
        assert response is not grpc.aio.EOF, f"stream ended before {kind}"
        seen.append(response)
        which = response.WhichOneof("response")
        if which == kind and (turn_kind is None or response.event.WhichOneof("event") == turn_kind):
            return seen


async def _read_all(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


def _kinds(responses: list[pb.ConverseResponse]) -> list[str]:
    out = []
    for response in responses:
        which = str(response.WhichOneof("response"))
        out.append(str(response.event.WhichOneof("event")) if which == "event" else which)
    return out


def _wav_ms(message: dict[str, Any]) -> float:
    part = next(p for p in message["content"] if p["type"] == "input_audio")
    with wave.open(io.BytesIO(base64.b64decode(str(part["input_audio"]["data"])))) as wav:
        frames: int = wav.getnframes()
        rate: int = wav.getframerate()
    return frames * 1000 / rate


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_speech_pause_speech_makes_two_answered_turns(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    commits = _metric("audiochat_turn_commits_total", mode="server_vad")
    waits = _metric("audiochat_speech_end_to_first_audio_seconds_count")
    call = await open_hands_free(service, "fixture/audio_no_finish_reason")
    mic = Stream(call)
    first, second = utterance(FIRST), utterance(SECOND, "nova")
    await mic.send(silence(1000) + first + silence(800))
    one = await read_until(call, "event", "completed")
    start_two = mic.ms + 500
    await mic.send(silence(500) + second + silence(800))
    two = await read_until(call, "event", "completed")
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF

    for responses in (one, two):
        kinds = _kinds(responses)
        assert kinds[:3] == ["speech_started", "speech_stopped", "started"] and kinds[-1] == "completed"
        assert responses[-1].event.completed.reason == pb.FINISH_REASON_STOP
    truths = [(1000.0, 1000 + ms_of(first)), (start_two, start_two + ms_of(second))]
    for responses, (start, end) in zip((one, two), truths, strict=True):
        assert abs(responses[0].speech_started.audio_start_ms - start) <= 100
        assert abs(responses[1].speech_stopped.audio_end_ms - end) <= 150
    # Each utterance reached the model with its prefix padding (300 ms) and end padding (200 ms).
    user_turns = [m for m in upstream.requests[1]["messages"] if m["role"] == "user"]
    assert len(upstream.requests) == 2 and len(user_turns) == 2
    for message, (start, end) in zip(user_turns, truths, strict=True):
        assert abs(_wav_ms(message) - (end - start + 500)) <= 150
    assert _metric("audiochat_turn_commits_total", mode="server_vad") == commits + 2
    assert _metric("audiochat_speech_end_to_first_audio_seconds_count") == waits + 2


async def _barge_in(call: Any, mic: Stream, after_seconds: float) -> list[pb.ConverseResponse]:
    """Speak, wait for the answer's audio to play for a while, talk over it; the first turn's responses."""
    await mic.send(silence(600) + utterance(FIRST) + silence(700))
    await read_until(call, "event", "audio")
    await asyncio.sleep(after_seconds)
    await mic.send(utterance(SECOND, "nova"))
    return await read_until(call, "event", "completed")


def _received_ms(completed: pb.TurnCompleted) -> int:
    return completed.audio_samples * 1000 // 24_000


async def test_barge_in_by_voice_stops_the_answer_and_keeps_what_was_heard(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    barge_ins = _metric("audiochat_barge_ins_total", transport="grpc")
    call = await open_hands_free(service, "slow/audio_no_finish_reason")
    mic = Stream(call)
    responses = await _barge_in(call, mic, 0.6)
    kinds = _kinds(responses)
    assert "speech_started" in kinds
    assert "audio" not in kinds[kinds.index("speech_started") :], (
        "no audio of the answer after speech_started"
    )
    completed = responses[-1].event.completed
    assert completed.reason == pb.FINISH_REASON_INTERRUPTED
    assert 0 < _received_ms(completed) < ANSWER_MS
    # Counted once the stop has returned, which can be just after TurnCompleted reached this client.
    async with asyncio.timeout(5):
        while _metric("audiochat_barge_ins_total", transport="grpc") == barge_ins:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert _metric("audiochat_barge_ins_total", transport="grpc") == barge_ins + 1
    await upstream.client_closed.wait()  # the upstream stream was closed at once

    # The client says what it really played; the history keeps that part.
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=300)))
    await mic.send(silence(800))
    await read_until(call, "event", "completed")
    await call.done_writing()
    messages = upstream.requests[-1]["messages"]
    heard = heard_part(completed.transcript, 300, _received_ms(completed))
    assert heard and heard != completed.transcript
    assert messages[1] == {"role": "assistant", "content": heard}
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]


async def test_without_a_client_report_the_history_keeps_the_estimated_part(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_hands_free(service, "slow/audio_no_finish_reason")
    mic = Stream(call)
    completed = (await _barge_in(call, mic, 0.6))[-1].event.completed
    # The estimate: the time since the first audio went out, at most what was received.
    assert 600 <= completed.played_ms <= _received_ms(completed)
    await mic.send(silence(800))
    await read_until(call, "event", "completed")
    await call.done_writing()
    heard = heard_part(completed.transcript, completed.played_ms, _received_ms(completed))
    assert heard and upstream.requests[-1]["messages"][1] == {"role": "assistant", "content": heard}


@pytest.mark.parametrize(
    "noise",
    [white_noise(4000), silence(4000), silence(1000) + utterance(FIRST)[:4800] + silence(1500)],
    ids=["white noise", "silence", "100 ms click of speech"],
)
async def test_no_turn_without_speech(
    service: RunningService, upstream: FixtureUpstream, noise: bytes
) -> None:
    call = await open_hands_free(service, "fixture/audio_no_finish_reason")
    await Stream(call).send(noise)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("detection", "talk_over"),
    [
        ({}, utterance(SECOND)[:4800] + silence(600)),  # a false start: 100 ms of speech, then quiet
        ({"echo_guard_ms": 5000}, utterance(SECOND) + silence(100)),  # speech inside the echo guard
    ],
    ids=["false start", "echo guard"],
)
async def test_the_answer_goes_on_through_sounds_that_are_no_barge_in(
    service: RunningService, upstream: FixtureUpstream, detection: dict[str, int], talk_over: bytes
) -> None:
    call = await open_hands_free(service, "slow/audio_no_finish_reason", **detection)
    mic = Stream(call)
    await mic.send(silence(600) + utterance(FIRST) + silence(700))
    await read_until(call, "event", "audio")
    await mic.send(talk_over)
    responses = await read_until(call, "event", "completed")
    assert "speech_started" not in _kinds(responses)
    assert responses[-1].event.completed.reason == pb.FINISH_REASON_STOP
    await call.done_writing()


async def test_commit_by_hand_ends_the_speech_under_way(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_hands_free(service, "fixture/audio_no_finish_reason", silence_duration_ms=2000)
    mic = Stream(call)
    await mic.send(silence(500) + utterance(FIRST) + silence(300))
    await call.write(pb.ConverseRequest(commit=pb.Commit()))
    kinds = _kinds(await read_until(call, "event", "completed"))
    assert kinds[0] == "speech_started" and "speech_stopped" not in kinds
    assert len(upstream.requests) == 1
    await call.done_writing()


@pytest.mark.parametrize(
    ("detection", "audio_format", "message", "field"),
    [
        ({"threshold": 1.5}, None, "turn_detection.threshold", "config.turn_detection.threshold"),
        (
            {"silence_duration_ms": 50},
            None,
            "silence_duration_ms",
            "config.turn_detection.silence_duration_ms",
        ),
        ({"prefix_padding_ms": 60_000}, None, "prefix_padding_ms", "config.turn_detection.prefix_padding_ms"),
        ({}, pb.AudioFormat(encoding=pb.AUDIO_ENCODING_WAV), "pcm16", "audio.format.encoding"),
        (
            {},
            pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=4000),
            "sample_rate_hz",
            "audio.format.sample_rate_hz",
        ),
    ],
)
async def test_bad_turn_detection_is_refused_by_name(
    service: RunningService,
    detection: dict[str, Any],
    audio_format: pb.AudioFormat | None,
    message: str,
    field: str,
) -> None:
    call = service.stub.Converse()
    await call.write(server_vad("fixture/audio_no_finish_reason", **detection))
    if audio_format is not None:  # a bad config ends the call at once: nothing more can be written
        assert (await call.read()).HasField("started")
        await call.write(pb.ConverseRequest(audio=pb.AudioChunk(data=silence(20), format=audio_format)))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _read_all(call)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(failure.value.details())
    assert field in _bad_request_fields(failure.value)


def _bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the status's google.rpc.BadRequest detail."""
    status = rpc_status.from_call(error)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    return [violation.field for violation in bad.field_violations]


async def test_manual_turns_refuse_server_vad_settings(service: RunningService) -> None:
    call = service.stub.Converse()
    detection = pb.TurnDetection(type=pb.TURN_DETECTION_TYPE_MANUAL, threshold=0.6)
    turn = pb.TurnConfig(model="fixture/audio_no_finish_reason")
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=turn, turn_detection=detection)))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "turn_detection.threshold applies to server_vad only" in str(failure.value.details())
    assert _bad_request_fields(failure.value) == ["config.turn_detection.threshold"]


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000])
async def test_hands_free_at_other_input_rates(
    service: RunningService, upstream: FixtureUpstream, rate: int
) -> None:
    speech = np.frombuffer(utterance(FIRST), dtype="<i2").astype(np.float32)
    resampled = soxr.resample(speech, 24_000, rate).astype("<i2").tobytes()
    pcm = bytes(rate * 2 * 700 // 1000) + resampled + bytes(rate * 2 * 800 // 1000)
    call = await open_hands_free(service, "fixture/audio_no_finish_reason")
    audio_format = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=rate)
    step = rate * 2 * 20 // 1000
    for offset in range(0, len(pcm), step):
        chunk = pb.AudioChunk(data=pcm[offset : offset + step], format=audio_format)
        await call.write(pb.ConverseRequest(audio=chunk))
    responses = await read_until(call, "event", "completed")
    await call.done_writing()
    assert _kinds(responses)[:3] == ["speech_started", "speech_stopped", "started"]
    assert abs(responses[0].speech_started.audio_start_ms - 700) <= 100
    assert abs(responses[1].speech_stopped.audio_end_ms - (700 + ms_of(utterance(FIRST)))) <= 150
    part = upstream.requests[0]["messages"][0]["content"][0]["input_audio"]["data"]
    with wave.open(io.BytesIO(base64.b64decode(part))) as wav:
        assert wav.getframerate() == rate
