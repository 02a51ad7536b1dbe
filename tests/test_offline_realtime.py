"""The offline voice's Realtime face (`/v1/realtime`), spoken to with the openai SDK's realtime client.

Every event is read through the SDK's own parser (`connection.recv()`), so a shape the SDK would not
type as the event's class fails here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio
import websockets
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    ConversationItemAdded,
    RealtimeErrorEvent,
    ResponseAudioDeltaEvent,
    ResponseDoneEvent,
    ResponseTextDeltaEvent,
    SessionCreatedEvent,
)

from service.offline.answer import OFFLINE_NOTE, compose_answer
from service.offline.app import OfflineVoiceSettings
from service.offline.realtime_config import RealtimeError
from service.offline.realtime_conversation import Conversation, Item, check_item
from service.offline.realtime_session import RealtimeLimits
from service.offline.server import OfflineVoiceServer
from service.offline.speech import synthesize
from tests.speech import silence, utterance

Json = dict[str, Any]
MODEL = "gpt-realtime"
TEXT_ONLY: Json = {
    "type": "realtime",
    "output_modalities": ["text"],
    "audio": {"input": {"turn_detection": None}},
}
SPOKEN: Json = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {"input": {"turn_detection": None}},
}
WEATHER_TOOL: Json = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def voice() -> AsyncIterator[OfflineVoiceServer]:
    async with OfflineVoiceServer() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def paced() -> AsyncIterator[OfflineVoiceServer]:
    """Speaks at playback speed, so an answer can be stopped in the middle."""
    async with OfflineVoiceServer(OfflineVoiceSettings(realtime_factor=1.0)) as server:
        yield server


def _client(server: OfflineVoiceServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="offline", max_retries=0)


@contextlib.asynccontextmanager
async def _session(
    server: OfflineVoiceServer, session: Json | None
) -> AsyncIterator[AsyncRealtimeConnection]:
    """A Realtime session through the SDK, configured with `session` (None: the server's defaults)."""
    async with _client(server).realtime.connect(model=MODEL) as connection:
        created = await connection.recv()
        assert isinstance(created, SessionCreatedEvent)
        if session is not None:
            await connection.session.update(session=session)  # type: ignore[arg-type]
            assert (await connection.recv()).type == "session.updated"
        yield connection


async def _until(connection: AsyncRealtimeConnection, kind: str) -> list[Any]:
    """Every event up to and including the first of type `kind`."""
    events = []
    async with asyncio.timeout(20):
        while True:
            event = await connection.recv()
            events.append(event)
            if event.type == kind:
                return events


async def _say(connection: AsyncRealtimeConnection, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await connection.conversation.item.create(item=item)  # type: ignore[arg-type]
    added = await _until(connection, "conversation.item.done")
    assert [e.type for e in added] == ["conversation.item.added", "conversation.item.done"]


async def _error(connection: AsyncRealtimeConnection) -> Any:
    error = (await _until(connection, "error"))[-1]
    assert isinstance(error, RealtimeErrorEvent)
    return error.error


def _audio(events: list[Any]) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if isinstance(e, ResponseAudioDeltaEvent))


def _transcript(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")


@module_loop
async def test_text_turn(voice: OfflineVoiceServer) -> None:
    async with _session(voice, TEXT_ONLY) as connection:
        await _say(connection, "Is a golden retriever a good family dog?")
        await connection.response.create()
        events = await _until(connection, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert kinds[-5:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == compose_answer("Is a golden retriever a good family dog?", None)
    assert events[-5].text == text
    done = events[-1]
    assert isinstance(done, ResponseDoneEvent)
    assert done.response.status == "completed"
    assert done.response.output is not None and done.response.output[0].content[0].text == text  # type: ignore[union-attr]
    usage = done.response.usage
    assert usage is not None and usage.output_token_details is not None
    assert (
        usage.output_token_details.audio_tokens == 0
        and usage.output_tokens == usage.output_token_details.text_tokens
    )
    assert usage.total_tokens == (usage.input_tokens or 0) + (usage.output_tokens or 0) > 0


@module_loop
async def test_audio_turn_with_commit(voice: OfflineVoiceServer) -> None:
    speech = utterance("What a lovely morning.")
    async with _session(
        voice, {**SPOKEN, "audio": {**SPOKEN["audio"], "output": {"voice": "ash"}}}
    ) as connection:
        for start in range(0, len(speech), 4800):
            await connection.input_audio_buffer.append(
                audio=base64.b64encode(speech[start : start + 4800]).decode()
            )
        await connection.input_audio_buffer.commit()
        committed = await _until(connection, "conversation.item.done")
        await connection.response.create()
        events = await _until(connection, "response.done")
    assert [e.type for e in committed] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert isinstance(committed[1], ConversationItemAdded)
    assert committed[1].item.id == committed[0].item_id
    assert committed[1].item.content[0].type == "input_audio"  # type: ignore[union-attr]
    answer = compose_answer("", len(speech) // 48 / 1000)
    assert "I heard" in answer
    assert _transcript(events) == answer
    # Transcript deltas run just ahead of the audio they say, interleaved with it.
    kinds = [e.type for e in events]
    first_audio = kinds.index("response.output_audio.delta")
    assert kinds.index("response.output_audio_transcript.delta") < first_audio
    assert "response.output_audio_transcript.delta" in kinds[first_audio + 1 :]
    assert _audio(events) == synthesize(answer, "ash")
    usage = events[-1].response.usage
    assert usage.input_token_details.audio_tokens == -(-(len(speech) // 48) // 100)
    assert usage.output_token_details.audio_tokens == -(-(len(_audio(events)) // 48) // 100)


@module_loop
async def test_server_vad_commits_and_answers(voice: OfflineVoiceServer) -> None:
    """The API's default turn detection: speech then silence is a turn, answered without a commit."""
    speech = silence(400) + utterance("Tell me about the weather today.") + silence(900)
    async with _session(voice, None) as connection:
        for start in range(0, len(speech), 960):
            await connection.input_audio_buffer.append(
                audio=base64.b64encode(speech[start : start + 960]).decode()
            )
        events = await _until(connection, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    started, stopped, committed = events[:3]
    assert started.item_id == stopped.item_id == committed.item_id
    assert 300 <= started.audio_start_ms <= 500 < stopped.audio_end_ms <= len(speech) // 48 - 500
    assert events[-1].response.status == "completed"
    assert "I heard" in _transcript(events)


@module_loop
async def test_cancel_mid_answer_then_truncate(paced: OfflineVoiceServer) -> None:
    async with _session(paced, SPOKEN) as connection:
        await _say(connection, "Please tell me a long story about a lighthouse keeper and the sea.")
        await connection.response.create()
        heard = await _until(connection, "response.output_audio.delta")
        await connection.response.cancel()
        events = heard + await _until(connection, "response.done")
        item_id = heard[1].item.id
        received_ms = len(_audio(events)) // 48
        await connection.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=received_ms + 1
        )
        too_far = await _error(connection)
        await connection.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=received_ms // 2
        )
        truncated = (await _until(connection, "conversation.item.truncated"))[-1]
        await connection.conversation.item.retrieve(item_id=item_id)
        retrieved = (await _until(connection, "conversation.item.retrieved"))[-1]
    done = events[-1]
    assert done.response.status == "cancelled"
    assert done.response.status_details.reason == "client_cancelled"
    whole = synthesize(
        compose_answer("Please tell me a long story about a lighthouse keeper and the sea.", None)
    )
    # At playback speed the cancel arrives a piece or two in: most of the answer was never sent.
    assert 0 < len(_audio(events)) < len(whole) // 2
    assert whole.startswith(_audio(events))
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert item_done.item.status == "incomplete"
    assert done.response.usage.output_token_details.audio_tokens == -(-received_ms // 100)
    assert too_far.param == "audio_end_ms"
    assert truncated.item_id == item_id and truncated.audio_end_ms == received_ms // 2
    # Truncation drops the transcript: the model's memory holds nothing the listener did not hear.
    assert retrieved.item.content[0].transcript is None


@module_loop
async def test_tool_call_round_trip(voice: OfflineVoiceServer) -> None:
    session = {**TEXT_ONLY, "tools": [WEATHER_TOOL], "tool_choice": "auto", "parallel_tool_calls": False}
    async with _session(voice, session) as connection:
        await _say(connection, "Use get_weather for Paris")
        await connection.response.create()
        called = await _until(connection, "response.done")
        call = next(e for e in called if e.type == "response.function_call_arguments.done")
        output = {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}
        await connection.conversation.item.create(item=output)  # type: ignore[arg-type]
        await _until(connection, "conversation.item.done")
        await connection.response.create()
        answered = await _until(connection, "response.done")
    pieces = [e.delta for e in called if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 1 and "".join(pieces) == call.arguments
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert called[-1].response.output[0].type == "function_call"
    assert called[-1].response.output[0].call_id == call.call_id
    text = "".join(e.delta for e in answered if e.type == "response.output_text.delta")
    assert text == 'get_weather returned: {"sky": "clear"}.'


@module_loop
async def test_spoken_tool_call_says_a_preamble_first(voice: OfflineVoiceServer) -> None:
    session = {**SPOKEN, "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "get_weather"}}
    async with _session(voice, session) as connection:
        await _say(connection, "How is it in Oslo")
        await connection.response.create()
        events = await _until(connection, "response.done")
    output = events[-1].response.output
    assert [item.type for item in output] == ["message", "function_call"]
    assert _transcript(events) == "Let me call get_weather."
    assert json.loads(output[1].arguments) == {"city": "Oslo"}


@module_loop
async def test_max_output_tokens_ends_incomplete(voice: OfflineVoiceServer) -> None:
    async with _session(voice, TEXT_ONLY) as connection:
        await _say(connection, "Is a golden retriever a good family dog?")
        await connection.response.create(response={"max_output_tokens": 5})
        events = await _until(connection, "response.done")
    done = events[-1].response
    assert done.status == "incomplete" and done.status_details.reason == "max_output_tokens"
    assert 0 < done.usage.output_tokens <= 5
    assert OFFLINE_NOTE.startswith("".join(e.delta for e in events if e.type == "response.output_text.delta"))


@module_loop
async def test_out_of_band_response_leaves_the_conversation_alone(voice: OfflineVoiceServer) -> None:
    async with _session(voice, TEXT_ONLY) as connection:
        item: Any = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Summarize it"}],
        }
        await connection.response.create(
            response={"conversation": "none", "input": [item], "metadata": {"k": "v"}}
        )
        events = await _until(connection, "response.done")
    assert "conversation.item.added" not in [e.type for e in events]
    assert events[-1].response.conversation_id is None and events[-1].response.metadata == {"k": "v"}
    assert "You said: Summarize it." in "".join(
        e.delta for e in events if e.type == "response.output_text.delta"
    )


BAD_EVENTS: list[tuple[Json | str, str | None, str | None]] = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_type", None),
    ({"type": "response.make"}, "invalid_value", "type"),
    ({"type": "response.create", "responses": {}}, "unknown_parameter", "responses"),
    (
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text", "audio"]}},
        "invalid_value",
        "session.output_modalities",
    ),
    (
        {"type": "session.update", "session": {"output_modalities": ["text"]}},
        "missing_required_parameter",
        "session.type",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
        },
        "unsupported_value",
        "session.audio.output.format.type",
    ),
    (
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "bob"}}}},
        "invalid_value",
        "session.audio.output.voice",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        },
        "unsupported_value",
        "session.audio.input.transcription",
    ),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "tool_choice": {"type": "function", "name": "nope"}},
        },
        "invalid_value",
        "session.tool_choice.name",
    ),
    (
        {"type": "session.update", "session": {"type": "realtime", "parallel_tool_calls": "yes"}},
        "invalid_type",
        "session.parallel_tool_calls",
    ),
    (
        {"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}},
        "invalid_value",
        "item.role",
    ),
    (
        {"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "x"}},
        "missing_required_parameter",
        "item.call_id",
    ),
    (
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "***"}]},
        },
        "invalid_value",
        "item.content[0].audio",
    ),
    (
        {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 0},
        "item_not_found",
        "item_id",
    ),
    ({"type": "response.cancel"}, "response_cancel_not_active", "response_id"),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
    ({"type": "input_audio_buffer.append", "audio": 5}, "missing_required_parameter", "audio"),
    ({"type": "output_audio_buffer.clear"}, "unsupported_value", "type"),
    (
        {"type": "response.create", "response": {"output_modalities": ["video"]}},
        "invalid_value",
        "response.output_modalities[0]",
    ),
]


@module_loop
async def test_bad_events_get_error_events_and_the_session_goes_on(voice: OfflineVoiceServer) -> None:
    async with _session(voice, TEXT_ONLY) as connection:
        for index, (bad, code, param) in enumerate(BAD_EVENTS):
            if isinstance(bad, dict):
                await connection.send_raw(json.dumps({**bad, "event_id": f"evt_{index}"}))
            else:
                await connection.send_raw(bad)
            error = await _error(connection)
            assert (error.code, error.param) == (code, param), bad
            assert error.type == "invalid_request_error" and error.message
            assert error.event_id == (f"evt_{index}" if isinstance(bad, dict) else None)
        await _say(connection, "still there?")
        await connection.response.create()
        await connection.response.create()  # one response at a time
        error = await _error(connection)
        events = await _until(connection, "response.done")
    assert error.code == "conversation_already_has_active_response"
    assert events[-1].response.status == "completed"


@module_loop
async def test_voice_is_fixed_once_the_model_has_spoken(voice: OfflineVoiceServer) -> None:
    async with _session(voice, SPOKEN) as connection:
        await _say(connection, "hello")
        await connection.response.create()
        await _until(connection, "response.done")
        await connection.session.update(session={"type": "realtime", "audio": {"output": {"voice": "echo"}}})
        error = await _error(connection)
    assert error.code == "cannot_update_voice"


@module_loop
async def test_binary_frames_are_refused_by_name(voice: OfflineVoiceServer) -> None:
    url = voice.base_url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    async with websockets.connect(url) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        await socket.send(b"\x00\x01")
        error = json.loads(await socket.recv())
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
    assert "Binary frames" in error["error"]["message"]


async def test_limits_sessions_length_and_input_buffer() -> None:
    limits = RealtimeLimits(max_sessions=1, max_session_seconds=1.0, max_input_buffer_bytes=4800)
    async with OfflineVoiceServer(OfflineVoiceSettings(realtime_limits=limits)) as server:
        async with _session(server, TEXT_ONLY) as connection:
            async with _client(server).realtime.connect(model=MODEL) as refused:
                assert (await _error(refused)).code == "session_limit_reached"
                with pytest.raises(websockets.ConnectionClosedError) as closed:
                    await refused.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            await connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4800)).decode())
            await connection.input_audio_buffer.append(audio=base64.b64encode(bytes(2)).decode())
            full = await _error(connection)
            expired = await _error(connection)
            with pytest.raises(websockets.ConnectionClosedOK):
                await connection.recv()
        assert full.code == "input_audio_buffer_full"
        assert expired.code == "session_expired"
        # The expired session's slot is free again (once the server has seen the socket close).
        async with asyncio.timeout(5):
            while server.realtime_sessions:  # noqa: ASYNC110 (the count lives in another task)
                await asyncio.sleep(0.01)
        async with _session(server, TEXT_ONLY) as again:  # configured: served, not refused
            await again.session.update(session={"type": "realtime"})
            assert (await again.recv()).type == "session.updated"


HOSTILE: list[Any] = [None, True, -1, 1e300, "", "\ud800", [], [{}], {}, {"type": {}}]
TEMPLATES: list[Json] = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "output_modalities": ["text"],
            "max_output_tokens": 200,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad"},
                },
                "output": {"format": {"type": "audio/pcm"}, "voice": "alloy", "speed": 1.0},
            },
        },
    },
    {
        "type": "conversation.item.create",
        "previous_item_id": "root",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}, {"type": "input_audio", "audio": "AAAA"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call", "name": "f", "call_id": "c", "arguments": "{}"},
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c", "output": "ok"},
    },
    {"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": 10},
    {"type": "conversation.item.delete", "item_id": "item_x"},
    {
        "type": "response.create",
        "response": {
            "output_modalities": ["text"],
            "conversation": "none",
            "input": [{"type": "item_reference", "id": "item_x"}],
            "audio": {"output": {"voice": "ash"}},
            "metadata": {"a": "b"},
        },
    },
    {"type": "response.cancel", "response_id": "resp_x"},
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in an event a client could put something else (the `type` of the event itself aside)."""
    found = [path] if path and path != ("type",) else []
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    for key, child in children:
        found += _paths(child, (*path, key))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copied = json.loads(json.dumps(value))
    target = copied
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copied


@module_loop
async def test_hostile_values_anywhere_get_error_events_never_a_crash(voice: OfflineVoiceServer) -> None:
    """Every field of every client event replaced by hostile values: each gets an answer (an error event or
    the event's own), never a server_error, a closed socket or a hang."""
    url = voice.base_url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    sent = 0
    async with websockets.connect(url, max_size=None) as socket:
        await socket.send(json.dumps({"type": "session.update", "session": TEXT_ONLY}))
        for template in TEMPLATES:
            for path in _paths(template):
                for hostile in HOSTILE:
                    await socket.send(json.dumps(_replaced(template, path, hostile)))
                    sent += 1
            # A marker that must come back as its own error: everything before it was answered.
            await socket.send(json.dumps({"type": "marker", "event_id": f"m{sent}"}))
            async with asyncio.timeout(20):
                while True:
                    event = json.loads(await socket.recv())
                    if event["type"] == "error":
                        assert event["error"]["type"] != "server_error", event
                        if event["error"]["event_id"] == f"m{sent}":
                            break
    assert sent > 500
    async with asyncio.timeout(5):
        while voice.realtime_sessions:  # noqa: ASYNC110 (the count lives in another task)
            await asyncio.sleep(0.01)


def test_conversation_keeps_order_and_its_bounds() -> None:
    """Items go where `previous_item_id` says; past either bound the oldest go first, never the newest."""

    def text_item(item_id: str, words: str = "hi") -> Item:
        return check_item(
            {
                "id": item_id,
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": words}],
            }
        )

    conversation = Conversation(max_items=3, max_chars=10_000)
    assert conversation.add(text_item("a")) is None
    assert conversation.add(text_item("b")) == "a"
    assert conversation.add(text_item("c"), previous_item_id="root") is None
    assert conversation.add(text_item("d"), previous_item_id="c") == "c"
    assert [item.id for item in conversation.items()] == ["d", "a", "b"]  # c, the oldest in order, dropped
    with pytest.raises(RealtimeError) as duplicate:
        conversation.add(text_item("a"))
    assert duplicate.value.code == "item_id_already_exists"
    with pytest.raises(RealtimeError) as missing:
        conversation.add(text_item("e"), previous_item_id="zzz")
    assert missing.value.param == "previous_item_id"
    size = len(json.dumps(text_item("i0", "word " * 60).json))
    small = Conversation(max_items=100, max_chars=3 * size + 10)
    for index in range(5):
        small.add(text_item(f"i{index}", "word " * 60))
    assert [item.id for item in small.items()] == ["i2", "i3", "i4"]
    small.add(text_item("huge", "word " * 1000))
    assert [item.id for item in small.items()] == ["huge"], "one item over the bound is still kept"
