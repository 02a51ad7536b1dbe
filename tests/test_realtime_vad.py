"""The Realtime upstream's own turn detection (upstream_server_vad / upstream_semantic_vad): the session is
configured for it, the audio is appended as it arrives, its speech events surface as ours, the answers it
starts by itself are relayed as turns, speech over an answer interrupts it. Over gRPC Converse and the
WebSocket edge; refused on Chat Completions. Real gRPC, the SDK's realtime client, tests/realtime_server.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from adapters.edge_server import EdgeServer
from audiochat.v1 import audiochat_pb2 as pb
from tests.events import Collected
from tests.realtime_fixtures import Both, comparable, serve_both
from tests.realtime_server import Session, realtime_events
from tests.speech import chunks, ms_of, silence, utterance

pytestmark = pytest.mark.asyncio(loop_scope="module")
QUESTION = "Is a golden retriever a good family dog?"
PCM16 = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000, channels=1)


@dataclass
class Running:
    both: Both
    edge: str  # host:port of a WebSocket edge in front of the Realtime service


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running() -> AsyncIterator[Running]:
    async with serve_both() as both:
        edge = EdgeServer(replace(both.realtime_settings, http_port=0), both.realtime_target)
        port = await edge.start()
        try:
            yield Running(both, f"127.0.0.1:{port}")
        finally:
            await edge.stop()


def upstream_vad(
    model: str,
    kind: pb.TurnDetectionType.ValueType = pb.TURN_DETECTION_TYPE_UPSTREAM_SERVER_VAD,
    **fields: Any,
) -> Any:
    detection = pb.TurnDetection(type=kind, **fields)
    config = pb.ConverseConfig(turn=pb.TurnConfig(model=model), turn_detection=detection)
    return pb.ConverseRequest(config=config)


async def send_speech(call: Any, pcm16: bytes) -> None:
    for index, piece in enumerate(chunks(pcm16)):
        await call.write(
            pb.ConverseRequest(audio=pb.AudioChunk(data=piece, format=PCM16 if index == 0 else None))
        )


async def read_until_completed(
    call: Any, turn: Collected | None = None, first_audio: bool = False
) -> tuple[list[str], list[Any], Collected]:
    """The kinds of the responses up to the end of a turn (or its first audio), the speech events, and
    the turn's events (added to `turn`)."""
    kinds: list[str] = []
    speech: list[Any] = []
    turn = turn if turn is not None else Collected()
    while True:
        response = await call.read()
        kind = response.WhichOneof("response")
        kinds.append(kind)
        if kind in ("speech_started", "speech_stopped"):
            speech.append(getattr(response, kind))
        elif kind == "event":
            turn.add(response.event)
            if response.event.HasField("completed") or (first_audio and response.event.HasField("audio")):
                return kinds, speech, turn


def appended(session: Session) -> bytes:
    return b"".join(base64.b64decode(event["audio"]) for event in session.sent("input_audio_buffer.append"))


async def test_the_upstream_detects_the_turn_and_its_answer_is_relayed(running: Running) -> None:
    both = running.both
    chat = both.chat.Converse()
    await chat.write(
        pb.ConverseRequest(
            config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/audio_no_finish_reason"))
        )
    )
    await chat.read()
    await chat.write(pb.ConverseRequest(text=pb.TextInput(text=QUESTION)))
    _, _, by_chat = await read_until_completed(chat)
    call = both.realtime.Converse()
    await call.write(upstream_vad("fixture/audio_no_finish_reason", silence_duration_ms=300, threshold=0.6))
    assert (await call.read()).started.conversation_id
    speech = utterance(QUESTION)
    await send_speech(call, silence(400) + speech + silence(500))
    kinds, (started, stopped), turn = await read_until_completed(call)
    assert kinds[:3] == ["speech_started", "speech_stopped", "event"]
    assert abs(started.audio_start_ms - 400) <= 40
    assert abs(stopped.audio_end_ms - (400 + ms_of(speech) + 300)) <= 60
    # The answer the upstream started by itself, with the same events as any other answer (its
    # TurnStarted also says how much speech it answers: see below).
    assert comparable(turn)[1:] == comparable(by_chat)[1:]
    assert turn.completed is not None and turn.completed.reason == pb.FINISH_REASON_STOP
    # The gateway kept the committed speech (with the default 300 ms prefix padding) for its history.
    # From 300 ms before the speech started to the end the upstream committed (300 ms of silence after it).
    assert abs(turn.events[0].started.input_audio_ms - (300 + ms_of(speech) + 300)) <= 60
    session = both.realtime_server.last
    (update,) = session.sent("session.update")
    assert update["session"]["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "create_response": True,
        "interrupt_response": True,
        "threshold": 0.6,
        "silence_duration_ms": 300,
    }
    assert appended(session) == silence(400) + speech + silence(500), "every byte, in order"
    assert not session.sent("input_audio_buffer.commit") and not session.sent("response.create")
    await call.done_writing()
    await chat.done_writing()


async def test_speech_over_an_answer_interrupts_it_and_the_interrupt_truncates(running: Running) -> None:
    both = running.both
    call = both.realtime.Converse()
    await call.write(
        upstream_vad("slow/audio_no_finish_reason", pb.TURN_DETECTION_TYPE_UPSTREAM_SEMANTIC_VAD)
    )
    await call.read()
    await send_speech(call, utterance("Tell me about dogs.") + silence(600))
    _, _, turn = await read_until_completed(call, first_audio=True)
    await send_speech(call, utterance("Wait, cats instead."))
    kinds, _, turn = await read_until_completed(call, turn)
    assert turn.completed is not None and turn.completed.reason == pb.FINISH_REASON_INTERRUPTED
    assert kinds[0] == "speech_started", "the barge-in is heard before the turn ends"
    session = both.realtime_server.last
    # The upstream cancelled its answer itself (the gateway asked for nothing): less than the whole answer.
    events, _ = realtime_events("audio_no_finish_reason", "resp", "item")
    whole = sum(len(base64.b64decode(e["delta"])) for e in events if e["type"].endswith("audio.delta"))
    assert 0 < len(turn.audio) < whole
    assert not session.sent("response.create")
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=7)))
    assert session.turn_detection == {
        "type": "semantic_vad",
        "create_response": True,
        "interrupt_response": True,
    }
    # The client said how much it played: the answer's audio item is cut there.
    for _ in range(100):
        truncates = session.sent("conversation.item.truncate")
        if truncates and truncates[-1]["audio_end_ms"] == 7:
            break
        await asyncio.sleep(0.02)
    assert truncates and truncates[-1]["audio_end_ms"] == 7
    answer_items = {e["item_id"] for e in session.replied if e["type"].endswith("audio.delta")}
    assert answer_items == {truncates[-1]["item_id"]}, "the interrupted answer's audio item is the one cut"
    await call.done_writing()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            upstream_vad("fixture/audio_no_finish_reason", min_speech_duration_ms=100),
            "min_speech_duration_ms",
        ),
        (
            upstream_vad("fixture/x", pb.TURN_DETECTION_TYPE_UPSTREAM_SEMANTIC_VAD, threshold=0.5),
            "threshold",
        ),
        (upstream_vad("fixture/x", silence_duration_ms=20), "silence_duration_ms"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field(running: Running, request_: Any, field: str) -> None:
    call = running.both.realtime.Converse()
    await call.write(request_)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"turn_detection.{field}" in (caught.value.details() or "")


@pytest.mark.parametrize(
    "kind", [pb.TURN_DETECTION_TYPE_UPSTREAM_SERVER_VAD, pb.TURN_DETECTION_TYPE_UPSTREAM_SEMANTIC_VAD]
)
async def test_refused_on_chat_completions(running: Running, kind: pb.TurnDetectionType.ValueType) -> None:
    call = running.both.chat.Converse()
    await call.write(upstream_vad("fixture/audio_no_finish_reason", kind))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Realtime upstream" in (caught.value.details() or "")


async def test_text_is_refused_while_the_upstream_detects_turns(running: Running) -> None:
    call = running.both.realtime.Converse()
    await call.write(upstream_vad("fixture/audio_no_finish_reason"))
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text=QUESTION)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_over_the_websocket(running: Running) -> None:
    config = {
        "type": "config",
        "model": "fixture/audio_no_finish_reason",
        "turn_detection": {"type": "upstream_server_vad", "silence_duration_ms": 300},
    }
    async with connect(f"ws://{running.edge}/v1/converse", compression=None) as ws:
        await ws.send(json.dumps(config))
        assert json.loads(await ws.recv())["type"] == "conversation.started"
        for piece in chunks(silence(300) + utterance(QUESTION) + silence(400)):
            await ws.send(piece)
        kinds: list[str] = []
        while not kinds or kinds[-1] != "turn.completed":
            frame = await ws.recv()
            kinds.append("audio" if isinstance(frame, bytes) else json.loads(frame)["type"])
            if kinds[-1] == "turn.completed":
                assert json.loads(frame)["reason"] == "stop"
    assert kinds[:3] == ["speech.started", "speech.stopped", "turn.started"]
    assert "audio" in kinds
    session = running.both.realtime_server.last
    assert session.turn_detection is not None and session.turn_detection["type"] == "server_vad"


async def test_refused_on_chat_completions_over_the_websocket(running: Running) -> None:
    chat = EdgeServer(replace(running.both.realtime_settings, http_port=0), running.both.chat_target)
    port = await chat.start()
    try:
        async with connect(f"ws://127.0.0.1:{port}/v1/converse", compression=None) as ws:
            config = {"type": "config", "turn_detection": {"type": "upstream_semantic_vad"}}
            await ws.send(json.dumps(config))
            while True:
                frame = await ws.recv()
                if isinstance(frame, str) and json.loads(frame)["type"] == "error":
                    break
        assert "turn_detection.type" in frame
    finally:
        await chat.stop()


async def test_a_resumed_conversation_gets_a_new_session_with_its_history(running: Running) -> None:
    both = running.both
    call = both.realtime.Converse()
    await call.write(upstream_vad("fixture/text_only", silence_duration_ms=200))
    conversation_id = (await call.read()).started.conversation_id
    speech = utterance("Tell me about dogs.")
    await send_speech(call, speech + silence(300))
    _, _, first = await read_until_completed(call)
    first_session = both.realtime_server.last
    call.cancel()
    again = both.realtime.Converse()
    last = first.events[-1]
    resume = pb.ConverseResume(conversation_id=conversation_id, turn_id=last.turn_id, sequence=last.sequence)
    await again.write(pb.ConverseRequest(resume=resume))
    assert (await again.read()).started.resumed
    await send_speech(again, speech + silence(300))
    kinds, _, second = await read_until_completed(again)
    assert kinds[:3] == ["speech_started", "speech_stopped", "event"]
    assert second.completed is not None and second.completed.reason == pb.FINISH_REASON_STOP
    session = both.realtime_server.last
    assert session is not first_session
    assert session.turn_detection is not None and session.turn_detection["silence_duration_ms"] == 200
    # The history the gateway kept: the first speech (as audio) and the first answer (as text).
    user, answer = (event["item"] for event in session.sent("conversation.item.create"))
    assert user["role"] == "user" and user["content"][0]["type"] == "input_audio"
    # No audio before the speech here, so no prefix padding: the speech and the silence that ended it.
    kept = len(base64.b64decode(user["content"][0]["audio"]))
    assert abs(kept - (len(speech) + 200 * 48)) <= 40 * 48
    assert answer["role"] == "assistant" and answer["content"][0]["text"] == first.text
    await again.done_writing()


async def test_a_dropped_session_ends_the_turn_and_the_call_unavailable(running: Running) -> None:
    call = running.both.realtime.Converse()
    await call.write(upstream_vad("drop/audio_no_finish_reason", silence_duration_ms=200))
    await call.read()
    await send_speech(call, utterance("Tell me about dogs.") + silence(300))
    _, _, turn = await read_until_completed(call)
    assert turn.completed is not None and turn.completed.reason == pb.FINISH_REASON_ERROR
    assert turn.completed.error.code == pb.ERROR_CODE_UNAVAILABLE and turn.completed.error.retryable
    assert turn.audio, "what arrived before the drop is kept"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
