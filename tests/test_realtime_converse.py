"""Converse on the Realtime upstream: one session per conversation, push-to-talk as the input audio
buffer, interrupts as response.cancel + conversation.item.truncate, tools, dropped and expired sessions.
Real gRPC, the real SDK's realtime client, a real WebSocket server (tests/realtime_server.py)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from audiochat.v1 import audiochat_pb2 as pb
from tests.events import Collected
from tests.realtime_fixtures import Both, comparable, serve_both
from tests.realtime_server import Session
from tests.speech import chunks, ms_of, silence, utterance

pytestmark = pytest.mark.asyncio(loop_scope="module")
QUESTION = "Is a golden retriever a good family dog?"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def both() -> AsyncIterator[Both]:
    async with serve_both() as running:
        yield running


def config(model: str, **turn: Any) -> pb.ConverseRequest:
    return pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=model, **turn)))


def text(value: str) -> pb.ConverseRequest:
    return pb.ConverseRequest(text=pb.TextInput(text=value))


async def open_conversation(stub: Any, model: str, **turn: Any) -> Any:
    call = stub.Converse()
    await call.write(config(model, **turn))
    assert (await call.read()).started.conversation_id.startswith("conv_")
    return call


async def read_turn(call: Any, until_first_audio: bool = False) -> Collected:
    collected = Collected()
    while True:
        response = await call.read()
        collected.add(response.event)
        if response.event.HasField("completed"):
            return collected
        if until_first_audio and response.event.HasField("audio"):
            return collected


async def end(call: Any) -> None:
    await call.done_writing()
    while await call.read() is not None and not call.done():
        pass


def items(session: Session) -> list[dict[str, Any]]:
    return [event["item"] for event in session.sent("conversation.item.create")]


def user_text(value: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}


def answer_text(value: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": value}]}


async def test_a_conversation_is_one_session_and_each_turn_sends_only_what_is_new(both: Both) -> None:
    model = "fixture/audio_no_finish_reason"
    chat_call = await open_conversation(both.chat, model, instructions="Be brief.")
    sessions = len(both.realtime_server.sessions)
    call = await open_conversation(both.realtime, model, instructions="Be brief.")
    for question in (QUESTION, "And for a small flat?"):
        await chat_call.write(text(question))
        await call.write(text(question))
        assert comparable(await read_turn(call)) == comparable(await read_turn(chat_call))
    session = both.realtime_server.last
    assert len(both.realtime_server.sessions) == sessions + 1, "one session for the whole conversation"
    assert len(session.sent("session.update")) == 1
    assert session.sent("session.update")[0]["session"]["instructions"] == "Be brief."
    # The upstream holds its own answer: the second turn sends the new question only.
    assert items(session) == [user_text(QUESTION), user_text("And for a small flat?")]
    assert len(session.sent("response.create")) == 2
    await end(call)
    await end(chat_call)
    await asyncio.wait_for(session.closed.wait(), 5)  # closed with the call


async def test_push_to_talk_is_the_input_audio_buffer(both: Both) -> None:
    call = await open_conversation(both.realtime, "fixture/audio_no_finish_reason")
    pcm = bytes(range(256)) * 600  # 153600 bytes: 3.2 s at 24 kHz, more than one append
    form = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000, channels=1)
    await call.write(pb.ConverseRequest(audio=pb.AudioChunk(data=pcm[:1000], format=form)))
    await call.write(pb.ConverseRequest(audio=pb.AudioChunk(data=pcm[1000:])))
    await call.write(pb.ConverseRequest(commit=pb.Commit()))
    done = (await read_turn(call)).completed
    assert done is not None and done.reason == pb.FINISH_REASON_STOP
    session = both.realtime_server.last
    appended = session.sent("input_audio_buffer.append")
    assert len(appended) > 1
    assert b"".join(base64.b64decode(event["audio"]) for event in appended) == pcm
    kinds = [event["type"] for event in session.events]
    assert kinds[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert not items(session), "the recording went through the buffer, not as an item"
    await end(call)


async def test_interrupt_mid_answer_cancels_and_truncates_at_played_ms(both: Both) -> None:
    call = await open_conversation(both.realtime, "slow/audio_no_finish_reason")
    await call.write(text(QUESTION))
    partial = await read_turn(call, until_first_audio=True)
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=1)))
    while partial.completed is None:
        partial.add((await call.read()).event)
    assert partial.completed.reason == pb.FINISH_REASON_INTERRUPTED
    heard = partial.completed.played_ms
    assert heard == 1
    session = both.realtime_server.last
    for _ in range(100):
        if session.sent("conversation.item.truncate"):
            break
        await asyncio.sleep(0.02)
    assert len(session.sent("response.cancel")) == 1
    (truncate,) = session.sent("conversation.item.truncate")
    audio_item = next(e["item_id"] for e in session.replied if e["type"] == "response.output_audio.delta")
    assert truncate["item_id"] == audio_item
    assert truncate["content_index"] == 0
    assert truncate["audio_end_ms"] == 1
    kinds = [event["type"] for event in session.events]
    assert kinds.index("response.cancel") < kinds.index("conversation.item.truncate")
    await end(call)


async def test_interrupt_after_the_answer_arrived_truncates_at_played_ms(both: Both) -> None:
    call = await open_conversation(both.realtime, "fixture/audio_no_finish_reason")
    await call.write(text(QUESTION))
    answer = await read_turn(call)
    assert answer.completed is not None and answer.completed.audio_samples > 24_000 // 2
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=250)))
    session = both.realtime_server.last
    for _ in range(100):
        if session.sent("conversation.item.truncate"):
            break
        await asyncio.sleep(0.02)
    (truncate,) = session.sent("conversation.item.truncate")
    assert truncate["audio_end_ms"] == 250
    assert not session.sent("response.cancel"), "nothing was running to cancel"
    await end(call)


async def test_tool_calls_and_results_are_function_call_items(both: Both) -> None:
    call = await open_conversation(both.realtime, "toolcall/text_only")
    await call.write(text("What is the weather in Paris?"))
    calling = await read_turn(call)
    assert calling.completed is not None and calling.completed.reason == pb.FINISH_REASON_TOOL_CALLS
    calls = list(calling.completed.tool_calls)
    assert calls
    for tool_call in calls:
        result = pb.ToolResult(tool_call_id=tool_call.id, content='{"temp_c": 21}')
        await call.write(pb.ConverseRequest(tool_result=result))
    continued = await read_turn(call)
    assert continued.completed is not None and continued.completed.reason == pb.FINISH_REASON_STOP
    session = both.realtime_server.last
    outputs = [item for item in items(session) if item["type"] == "function_call_output"]
    assert outputs == [
        {"type": "function_call_output", "call_id": c.id, "output": '{"temp_c": 21}'} for c in calls
    ]
    assert len(session.sent("response.create")) == 2, "the continuation is on the same session"
    await end(call)


async def test_a_dropped_socket_ends_the_turn_and_the_next_turn_replays_the_history(both: Both) -> None:
    server = both.realtime_server
    call = await open_conversation(both.realtime, "fixture/audio_no_finish_reason")
    await call.write(text(QUESTION))
    first = await read_turn(call)
    server.drop_next = 1
    await call.write(text("Dropped?"))
    dropped = (await read_turn(call)).completed
    assert dropped is not None and dropped.reason == pb.FINISH_REASON_ERROR
    assert dropped.error.code == pb.ERROR_CODE_UNAVAILABLE and dropped.error.retryable
    sessions = len(server.sessions)
    await call.write(text("And for a small flat?"))
    third = await read_turn(call)
    assert third.completed is not None and third.completed.reason == pb.FINISH_REASON_STOP
    assert len(server.sessions) == sessions + 1, "a new session"
    assert items(server.last) == [
        user_text(QUESTION),
        answer_text(first.text),  # the history replayed as text; the failed turn is not in it
        user_text("And for a small flat?"),
    ]
    await end(call)


async def test_an_expired_session_is_replaced_before_the_next_turn(both: Both) -> None:
    server = both.realtime_server
    call = await open_conversation(both.realtime, "fixture/text_only", modalities=[pb.MODALITY_TEXT])
    server.expire_next = 1
    await call.write(text(QUESTION))
    first = await read_turn(call)
    assert first.completed is not None and first.completed.reason == pb.FINISH_REASON_STOP
    expired = server.last
    await asyncio.wait_for(expired.closed.wait(), 5)
    await asyncio.sleep(0.1)  # the close reaches the gateway's socket
    await call.write(text("Still there?"))
    second = await read_turn(call)
    assert second.completed is not None and second.completed.reason == pb.FINISH_REASON_STOP
    assert server.last is not expired
    assert items(server.last) == [user_text(QUESTION), answer_text(first.text), user_text("Still there?")]
    await end(call)


async def test_hands_free_speech_is_committed_to_the_session_and_answered(both: Both) -> None:
    detection = pb.TurnDetection(type=pb.TURN_DETECTION_TYPE_SERVER_VAD)
    setup = pb.ConverseConfig(
        turn=pb.TurnConfig(model="fixture/audio_no_finish_reason"), turn_detection=detection
    )
    call = both.realtime.Converse()
    await call.write(pb.ConverseRequest(config=setup))
    assert (await call.read()).started.conversation_id
    form = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000)
    speech = silence(600) + utterance("What time does the train to Boston leave tomorrow?") + silence(800)
    for index, piece in enumerate(chunks(speech)):
        await call.write(
            pb.ConverseRequest(audio=pb.AudioChunk(data=piece, format=form if index == 0 else None))
        )
    kinds = []
    while True:
        response = await call.read()
        which = response.WhichOneof("response")
        kinds.append(response.event.WhichOneof("event") if which == "event" else which)
        if which == "event" and response.event.HasField("completed"):
            assert response.event.completed.reason == pb.FINISH_REASON_STOP
            break
    assert kinds[:3] == ["speech_started", "speech_stopped", "started"]
    session = both.realtime_server.last
    heard = b"".join(base64.b64decode(event["audio"]) for event in session.sent("input_audio_buffer.append"))
    assert (
        abs(len(heard) / 48 - ms_of(utterance("What time does the train to Boston leave tomorrow?")) - 500)
        <= 150
    )
    assert [event["type"] for event in session.events][-2:] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    await end(call)
