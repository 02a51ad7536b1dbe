"""Converse end to end: history, push-to-talk, interrupts and in-band failures over a real gRPC stream."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any

import grpc
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService
from tests.events import Collected, expected
from tests.upstream_server import FixtureUpstream


def config(model: str, **turn: Any) -> pb.ConverseRequest:
    return pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=model, **turn)))


def text(value: str) -> pb.ConverseRequest:
    return pb.ConverseRequest(text=pb.TextInput(text=value))


async def open_conversation(service: RunningService, model: str) -> Any:
    call = service.stub.Converse()
    await call.write(config(model))
    first = await call.read()
    assert first.started.conversation_id.startswith("conv_")
    return call


async def read_turn(call: Any, until_first_audio: bool = False) -> Collected:
    """Read one turn's events (or only up to its first audio)."""
    collected = Collected()
    while True:
        response = await call.read()
        assert response is not pb.ConverseResponse, "stream ended mid-turn"
        collected.add(response.event)
        if response.event.HasField("completed"):
            return collected
        if until_first_audio and response.event.HasField("audio"):
            return collected


async def read_rest(call: Any, collected: Collected) -> Collected:
    while collected.completed is None:
        collected.add((await call.read()).event)
    return collected


async def test_two_turns_keep_history_by_audio_id(service: RunningService, upstream: FixtureUpstream) -> None:
    call = await open_conversation(service, "fresh/audio_no_finish_reason")
    await call.write(text("Is a golden retriever a good family dog?"))
    first = await read_turn(call)
    assert first.completed is not None
    assert first.completed.audio_id == expected("audio_no_finish_reason")["audio_id"]
    assert first.completed.audio_expires_at > time.time() + 3000
    await call.write(text("And for a small flat?"))
    second = await read_turn(call)
    assert second.sha256 == first.sha256 == expected("audio_no_finish_reason")["audio_sha256"]
    assert first.events[0].turn_id != second.events[0].turn_id
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert upstream.requests[1]["messages"] == [
        {"role": "user", "content": "Is a golden retriever a good family dog?"},
        {"role": "assistant", "audio": {"id": expected("audio_no_finish_reason")["audio_id"]}},
        {"role": "user", "content": "And for a small flat?"},
    ]


async def test_expired_answer_is_recalled_by_transcript(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    # The capture's expires_at lies in the past, as an id does after an hour.
    call = await open_conversation(service, "fixture/audio_no_finish_reason")
    await call.write(text("Is a golden retriever a good family dog?"))
    (await read_turn(call)).assert_matches("audio_no_finish_reason")
    await call.write(text("And for a small flat?"))
    (await read_turn(call)).assert_matches("audio_no_finish_reason")
    assert upstream.requests[1]["messages"][1] == {
        "role": "assistant",
        "content": expected("audio_no_finish_reason")["text"],
    }
    call.cancel()


def pcm_tone(seconds: float, rate: int) -> bytes:
    return b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(int(seconds * rate)))


async def test_push_to_talk_audio_is_sent_as_wav(service: RunningService, upstream: FixtureUpstream) -> None:
    call = await open_conversation(service, "fixture/audio_finish_before_expires")
    pcm = pcm_tone(1.25, 16_000)
    fmt = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16_000)
    for offset in range(0, len(pcm), 3_201):  # odd-sized chunks: samples split across messages
        chunk = pb.AudioChunk(data=pcm[offset : offset + 3_201], format=fmt if offset == 0 else None)
        await call.write(pb.ConverseRequest(audio=chunk))
    await call.write(pb.ConverseRequest(commit=pb.Commit()))
    turn = await read_turn(call)
    turn.assert_matches("audio_finish_before_expires")
    assert turn.events[0].started.input_audio_ms == 1250
    (part,) = upstream.requests[-1]["messages"][-1]["content"]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    wav = base64.b64decode(part["input_audio"]["data"])
    assert wav[:4] == b"RIFF" and struct.unpack("<I", wav[24:28])[0] == 16_000
    assert wav[44:] == pcm
    call.cancel()


async def test_interrupt_stops_the_answer_and_closes_the_upstream(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "slow/audio_no_finish_reason")
    await call.write(text("Tell me about dogs."))
    partial = await read_turn(call, until_first_audio=True)
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=50)))
    turn = await read_rest(call, partial)
    assert turn.completed is not None
    assert turn.completed.reason == pb.FINISH_REASON_INTERRUPTED
    assert turn.completed.played_ms == 50
    assert (
        turn.completed.audio_samples * 2
        == len(turn.audio)
        < expected("audio_no_finish_reason")["audio_bytes"]
    )
    await asyncio.wait_for(upstream.client_closed.wait(), timeout=2.0)
    # The next turn works, and its history holds only what was heard, never the full answer's audio id.
    upstream.requests.clear()
    await call.write(text("Never mind."))
    next_turn = await read_turn(call)
    assert next_turn.completed is not None and next_turn.completed.reason == pb.FINISH_REASON_STOP
    history = upstream.requests[0]["messages"]
    assert history[0] == {"role": "user", "content": "Tell me about dogs."}
    assert all("audio" not in message for message in history)
    heard = history[1]
    assert heard["role"] == "assistant"
    assert heard["content"].startswith("Yes") and heard["content"].endswith("…")
    assert len(heard["content"]) < len(expected("audio_no_finish_reason")["text"])
    call.cancel()


async def test_new_input_while_streaming_interrupts_first(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "slow/audio_finish_before_expires")
    await call.write(text("First question"))
    first = await read_turn(call, until_first_audio=True)
    await call.write(text("Second question"))
    first = await read_rest(call, first)
    assert first.completed is not None and first.completed.reason == pb.FINISH_REASON_INTERRUPTED
    second = await read_turn(call)
    second.assert_matches("audio_finish_before_expires")
    call.cancel()


@pytest.mark.parametrize("failure", ["429/rate_limit_exceeded", "500/server_error"])
async def test_a_failed_turn_is_in_band_and_the_conversation_goes_on(
    service: RunningService, upstream: FixtureUpstream, failure: str
) -> None:
    call = await open_conversation(service, "fixture/text_only")
    upstream.fail_next.append(failure)
    await call.write(text("Hello?"))
    failed = await read_turn(call)
    assert [e.WhichOneof("event") for e in failed.events] == ["completed"]
    assert failed.completed is not None and failed.completed.reason == pb.FINISH_REASON_ERROR
    error = failed.completed.error
    if failure.startswith("429"):
        assert (error.code, error.retry_after_ms, error.retryable) == (
            pb.ERROR_CODE_RESOURCE_EXHAUSTED,
            1500,
            True,
        )
    else:
        assert (error.code, error.retryable) == (pb.ERROR_CODE_UNAVAILABLE, True)
    await call.write(text("Hello again?"))
    (await read_turn(call)).assert_matches("text_only")
    # The failed question is not in the history of the next one.
    assert upstream.requests[-1]["messages"] == [{"role": "user", "content": "Hello again?"}]
    call.cancel()


async def test_midstream_error_is_in_band(service: RunningService) -> None:
    call = await open_conversation(service, "fixture/audio_midstream_error")
    await call.write(text("Hi"))
    (await read_turn(call)).assert_matches("audio_midstream_error")
    call.cancel()


async def test_half_close_lets_the_running_answer_finish(service: RunningService) -> None:
    call = await open_conversation(service, "slow/text_only")
    await call.write(text("Hi"))
    await call.done_writing()
    (await read_turn(call)).assert_matches("text_only")
    assert await call.read() is grpc.aio.EOF


async def test_interrupting_an_answer_that_already_arrived_keeps_only_what_was_heard(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    # Models speak faster than real time, so most barge-ins come after the last event, during playback.
    call = await open_conversation(service, "fresh/audio_no_finish_reason")
    await call.write(text("Is a golden retriever a good family dog?"))
    first = await read_turn(call)
    assert first.completed is not None and first.completed.reason == pb.FINISH_REASON_STOP
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=1000)))
    await call.write(text("Go on."))
    await read_turn(call)
    answer = upstream.requests[-1]["messages"][1]
    assert answer["role"] == "assistant" and "audio" not in answer, "the full answer's audio id is dropped"
    assert answer["content"].endswith("…")
    assert len(answer["content"]) < len(expected("audio_no_finish_reason")["text"])
    call.cancel()
