"""The Realtime upstream over real gRPC StreamTurn: the real openai SDK's realtime client over a real
WebSocket to a local server replaying captures as Realtime events (tests/realtime_server.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.realtime_upstream import RealtimeUpstream
from service.server import AudioChatServer
from service.upstream import OpenAIUpstream
from service.upstream_registry import KINDS
from service.upstream_routing import CHAT_COMPLETIONS, REALTIME, ModelRoutes, RoutedUpstream
from tests.conftest import TEST_SETTINGS
from tests.events import FIXTURES, Collected, text_request
from tests.realtime_server import RealtimeServer
from tests.upstream_server import FixtureUpstream

CAPTURES = sorted(p.name.removesuffix(".sse") for p in FIXTURES.glob("*.sse"))
module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = module_loop


@dataclass
class Both:
    """A service on each upstream, and the servers behind them."""

    chat: Any  # stub of the service on Chat Completions
    realtime: Any  # stub of the service on the Realtime API (AUDIOCHAT_UPSTREAM=openai-realtime)
    routed: Any  # stub of a Chat Completions service whose mapping sends `slow/` models to Realtime
    chat_server: FixtureUpstream
    realtime_server: RealtimeServer


async def _serve(stack: AsyncExitStack, settings: Any, upstream: Any) -> Any:
    server = AudioChatServer(settings, upstream)
    port = await server.start()
    stack.push_async_callback(server.stop)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stack.push_async_callback(channel.close)
    return pb_grpc.AudioChatServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def both() -> AsyncIterator[Both]:
    async with AsyncExitStack() as stack:
        chat_server = await stack.enter_async_context(FixtureUpstream())
        realtime_server = await stack.enter_async_context(RealtimeServer())
        chat = OpenAIUpstream("sk-test", chat_server.base_url, TEST_SETTINGS.deadlines)
        stack.push_async_callback(chat.close)
        # The registry's own opener, pointed at the local server by OPENAI_BASE_URL alone.
        settings = replace(
            TEST_SETTINGS, upstream="openai-realtime", openai_base_url=realtime_server.base_url
        )
        realtime = await KINDS["openai-realtime"].open(settings, stack)
        realtime_only = RealtimeUpstream("sk-test", realtime_server.base_url, TEST_SETTINGS.deadlines)
        stack.push_async_callback(realtime_only.close)
        routes = ModelRoutes(CHAT_COMPLETIONS, realtime_prefixes=("slow/",))
        routed = RoutedUpstream(routes, {CHAT_COMPLETIONS: chat, REALTIME: realtime_only})
        yield Both(
            await _serve(stack, TEST_SETTINGS, chat),
            await _serve(stack, settings, realtime),
            await _serve(stack, TEST_SETTINGS, routed),
            chat_server,
            realtime_server,
        )


async def collect(stub: Any, request: pb.StreamTurnRequest) -> Collected:
    collected = Collected()
    async for event in stub.StreamTurn(request):
        collected.add(event)
    return collected


def comparable(collected: Collected) -> list[tuple[str, str]]:
    """Each event as (kind, content) without what differs by design: turn ids, the upstream's request id,
    the Chat Completions audio id and its expiry, and the usage counts Chat Completions alone reports
    (reasoning and prediction tokens): the Realtime API has none of these."""
    summary: list[tuple[str, str]] = []
    for event in collected.events:
        kind = event.WhichOneof("event")
        copy = pb.TurnEvent()
        copy.CopyFrom(event)
        copy.turn_id = ""
        if kind == "started":
            copy.started.upstream_request_id = ""
        if kind == "usage":
            copy.usage.ClearField("output_reasoning_tokens")
            copy.usage.ClearField("output_accepted_prediction_tokens")
            copy.usage.ClearField("output_rejected_prediction_tokens")
        if kind == "completed":
            copy.completed.audio_id = ""
            copy.completed.audio_expires_at = 0
        summary.append((kind or "", str(copy)))
    return summary


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
