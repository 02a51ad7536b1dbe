"""The Realtime upstream over real gRPC StreamTurn: the real openai SDK's realtime client over a real
WebSocket to a local server replaying captures as Realtime events (tests/realtime_server.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import TurnFailed
from service.realtime_upstream import RealtimeUpstream
from service.upstream import Deadlines
from service.upstream_routing import APIS
from tests.events import FIXTURES, Collected, text_request
from tests.realtime_fixtures import Both, comparable, serve_both

CAPTURES = sorted(p.name.removesuffix(".sse") for p in FIXTURES.glob("*.sse"))
module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = module_loop


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def both() -> AsyncIterator[Both]:
    async with serve_both() as running:
        yield running


async def collect(stub: Any, request: pb.StreamTurnRequest) -> Collected:
    collected = Collected()
    async for event in stub.StreamTurn(request):
        collected.add(event)
    return collected


@pytest.mark.parametrize("name", CAPTURES)
async def test_the_same_answer_is_the_same_events_whichever_upstream(both: Both, name: str) -> None:
    chat = await collect(both.chat, text_request(f"fixture/{name}"))
    realtime = await collect(both.realtime, text_request(f"fixture/{name}"))
    assert comparable(realtime) == comparable(chat)
    assert realtime.audio == chat.audio and realtime.text == chat.text
    assert realtime.completed is not None and realtime.completed.audio_id == ""


async def test_stream_turn_is_a_short_session_seeded_with_the_history(both: Both) -> None:
    request = text_request("fixture/audio_no_finish_reason", "And a poodle?")
    request.config.instructions = "Be brief."
    request.config.voice = "marin"
    request.config.max_output_tokens = 200
    request.history.add(user=pb.UserMessage(text="Is a golden retriever a good family dog?"))
    request.history.add(
        assistant=pb.AssistantMessage(
            text="Yes, a golden retriever is a great family dog.",
            audio_id="audio_abc",
            audio_expires_at=2**40,
        )
    )
    await collect(both.realtime, request)
    session = both.realtime_server.last
    await session.closed.wait()  # the session ends with the turn
    assert session.model == "fixture/audio_no_finish_reason"
    (update,) = session.sent("session.update")
    assert update["session"] == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "max_output_tokens": 200,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
    }
    items = [event["item"] for event in session.sent("conversation.item.create")]
    assert items == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Is a golden retriever a good family dog?"}],
        },
        # The answer by its transcript: a Chat Completions audio id means nothing to a Realtime session.
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Yes, a golden retriever is a great family dog."}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And a poodle?"}]},
    ]
    assert [event["type"] for event in session.events][-1] == "response.create"


async def test_text_only_answer_asks_for_text(both: Both) -> None:
    request = text_request("fixture/text_only")
    request.config.modalities.append(pb.MODALITY_TEXT)
    chat = await collect(both.chat, request)
    realtime = await collect(both.realtime, request)
    assert comparable(realtime) == comparable(chat)
    assert both.realtime_server.last.sent("session.update")[0]["session"]["output_modalities"] == ["text"]


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.5), ("extra_body", {"top_p": 0.9})])
async def test_what_the_realtime_api_cannot_carry_is_refused_by_name(
    both: Both, field: str, value: Any
) -> None:
    request = text_request("fixture/text_only")
    if field == "temperature":
        request.config.temperature = value
    else:
        request.config.extra_body = json.dumps(value)
    sessions = len(both.realtime_server.sessions)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(both.realtime, request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"config.{field}" in (raised.value.details() or "")
    assert len(both.realtime_server.sessions) == sessions, "refused before any session opened"


@pytest.mark.parametrize(
    ("model", "status", "retry_after_ms"),
    [
        ("status/429/rate_limit_exceeded", grpc.StatusCode.RESOURCE_EXHAUSTED, "1500"),
        ("status/503/", grpc.StatusCode.UNAVAILABLE, None),
        ("status/401/invalid_api_key", grpc.StatusCode.UNAUTHENTICATED, None),
        ("error/invalid_request_error/invalid_value", grpc.StatusCode.INVALID_ARGUMENT, None),
        ("error/server_error/", grpc.StatusCode.UNAVAILABLE, None),
    ],
)
async def test_refusals_before_the_answer_are_call_statuses(
    both: Both, model: str, status: grpc.StatusCode, retry_after_ms: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(both.realtime, text_request(model))
    assert raised.value.code() == status
    trailers = dict(raised.value.trailing_metadata() or ())
    assert trailers.get("retry-after-ms") == retry_after_ms
    assert "sk-te" not in (raised.value.details() or ""), "the key's quoted part never reaches a client"


@pytest.mark.parametrize(
    ("model", "reason", "code"),
    [
        ("drop/audio_no_finish_reason", pb.FINISH_REASON_ERROR, pb.ERROR_CODE_UNAVAILABLE),
        ("failed/audio_no_finish_reason", pb.FINISH_REASON_ERROR, pb.ERROR_CODE_UNAVAILABLE),
        ("cancelled/audio_no_finish_reason", pb.FINISH_REASON_INTERRUPTED, None),
        ("incomplete/max_output_tokens/text_only", pb.FINISH_REASON_LENGTH, None),
        ("incomplete/content_filter/audio_no_finish_reason", pb.FINISH_REASON_CONTENT_FILTER, None),
    ],
)
async def test_how_a_response_ends_is_its_finish_reason(
    both: Both, model: str, reason: pb.FinishReason.ValueType, code: pb.ErrorCode.ValueType | None
) -> None:
    collected = await collect(both.realtime, text_request(model))
    done = collected.completed
    assert done is not None and done.reason == reason
    if code is None:
        assert not done.HasField("error")
    else:
        assert done.error.code == code and done.error.retryable
    # What arrived before the end is kept, whole samples only.
    assert len(collected.audio) % 2 == 0 and done.audio_samples * 2 == len(collected.audio)
    assert done.transcript == collected.text


async def test_rate_limits_feed_a_gauge(both: Both) -> None:
    await collect(both.realtime, text_request("ratelimits/text_only"))
    for limit, remaining in (("requests", 99.0), ("tokens", 9000.0)):
        labels = {"upstream": "realtime", "limit": limit}
        assert REGISTRY.get_sample_value("audiochat_upstream_rate_limit_remaining", labels) == remaining


async def test_the_model_mapping_picks_the_upstream_per_request(both: Both) -> None:
    chat_requests = len(both.chat_server.requests)
    sessions = len(both.realtime_server.sessions)
    # `slow/` is mapped to Realtime in this service; other models stay on its Chat Completions default.
    await collect(both.routed, text_request("slow/text_only"))
    assert len(both.realtime_server.sessions) == sessions + 1
    assert len(both.chat_server.requests) == chat_requests
    await collect(both.routed, text_request("fixture/text_only"))
    assert len(both.realtime_server.sessions) == sessions + 1
    assert len(both.chat_server.requests) == chat_requests + 1


async def test_turns_and_time_to_first_audio_are_labelled_by_upstream(both: Both) -> None:
    def value(name: str, api: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"transport": "grpc", "upstream": api, **labels}) or 0.0

    names: tuple[tuple[str, dict[str, str]], ...] = (
        ("audiochat_turns_total", {"outcome": "stop"}),
        ("audiochat_time_to_first_audio_seconds_count", {}),
    )
    before = {(name, api): value(name, api, **labels) for name, labels in names for api in APIS}
    await collect(both.realtime, text_request("fixture/audio_no_finish_reason"))
    await collect(both.realtime, text_request("fixture/audio_no_finish_reason"))
    await collect(both.chat, text_request("fixture/audio_no_finish_reason"))
    for name, labels in names:
        assert value(name, "realtime", **labels) - before[name, "realtime"] == 2
        assert value(name, "chat_completions", **labels) - before[name, "chat_completions"] == 1
    labels = {"upstream": "realtime"}
    assert REGISTRY.get_sample_value("audiochat_upstream_time_to_first_byte_seconds_count", labels)


async def test_tools_calls_results_and_recordings_reach_the_session_in_its_shapes(both: Both) -> None:
    request = text_request("fixture/audio_no_finish_reason", "Thanks.")
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    function = pb.FunctionTool(
        name="get_weather", description="Weather now", parameters_json=json.dumps(parameters)
    )
    request.config.tools.append(pb.Tool(function=function))
    request.config.tool_choice.function_name = "get_weather"
    # A recording at 16 kHz: the session takes 24 kHz pcm16, so it is resampled on the way.
    pcm_16k = (b"\x00\x10\x00\xf0" * 8000)[:32000]  # 1 s
    user = pb.UserMessage(
        audio=pb.AudioInput(
            data=pcm_16k,
            format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1),
        )
    )
    request.history.add(user=user)
    call = pb.ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}')
    request.history.add(assistant=pb.AssistantMessage(tool_calls=[call]))
    request.history.add(tool_result=pb.ToolResult(tool_call_id="call_1", content='{"temp_c": 21}'))
    await collect(both.realtime, request)
    session = both.realtime_server.last
    sent = session.sent("session.update")[0]["session"]
    assert sent["tools"] == [
        {"type": "function", "name": "get_weather", "description": "Weather now", "parameters": parameters}
    ]
    assert sent["tool_choice"] == {"type": "function", "name": "get_weather"}
    recording, called, result, question = (
        event["item"] for event in session.sent("conversation.item.create")
    )
    (part,) = recording["content"]
    assert part["type"] == "input_audio"
    assert abs(len(base64.b64decode(part["audio"])) - 48000) <= 960, "1 s of 24 kHz pcm16"
    assert called == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert result == {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}
    assert question["content"] == [{"type": "input_text", "text": "Thanks."}]


async def test_a_handshake_that_never_completes_is_deadline_exceeded() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the upgrade request, never answered, until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = RealtimeUpstream("sk-test", f"http://127.0.0.1:{port}/v1", Deadlines(connect_seconds=0.3))
    started = asyncio.get_running_loop().time()
    with pytest.raises(TurnFailed) as raised:
        await upstream.connect("gpt-realtime")
    assert raised.value.failure.code == pb.ERROR_CODE_DEADLINE_EXCEEDED and raised.value.failure.retryable
    assert asyncio.get_running_loop().time() - started < 3
    await upstream.close()
    server.close()


async def test_silence_mid_answer_past_the_idle_deadline_ends_the_answer(both: Both) -> None:
    deadlines = Deadlines(idle_seconds=0.3)
    upstream = RealtimeUpstream("sk-test", both.realtime_server.base_url, deadlines)
    params = {"model": "stall/audio_no_finish_reason", "messages": [{"role": "user", "content": "Hi"}]}
    received: list[object] = []

    async def read_answer() -> None:
        async with upstream.open(params) as stream:
            async for chunk in stream.chunks():
                received.append(chunk)

    with pytest.raises(TurnFailed) as raised:
        await read_answer()
    assert len(received) > 5, "the first half arrived"
    assert raised.value.failure.code == pb.ERROR_CODE_DEADLINE_EXCEEDED
    await asyncio.wait_for(both.realtime_server.last.closed.wait(), 3)  # the session was closed at once
    assert both.realtime_server.last.sent("response.cancel"), "the upstream was told to stop"
    await upstream.close()
