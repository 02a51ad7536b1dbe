"""Services on each upstream API and the local servers behind them, for the Realtime tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.realtime_upstream import RealtimeUpstream
from service.server import AudioChatServer
from service.settings import Settings
from service.upstream import OpenAIUpstream
from service.upstream_registry import KINDS
from service.upstream_routing import CHAT_COMPLETIONS, REALTIME, ModelRoutes, RoutedUpstream
from tests.conftest import TEST_SETTINGS
from tests.events import Collected
from tests.realtime_server import RealtimeServer
from tests.upstream_server import FixtureUpstream


@dataclass
class Both:
    """A service on each upstream, and the servers behind them."""

    chat: Any  # stub of the service on Chat Completions
    realtime: Any  # stub of the service on the Realtime API (AUDIOCHAT_UPSTREAM=openai-realtime)
    routed: Any  # stub of a Chat Completions service whose mapping sends `slow/` models to Realtime
    chat_server: FixtureUpstream
    realtime_server: RealtimeServer
    chat_target: str
    realtime_target: str
    realtime_settings: Settings


async def _serve(stack: AsyncExitStack, settings: Settings, upstream: Any) -> tuple[Any, str]:
    server = AudioChatServer(settings, upstream)
    port = await server.start()
    stack.push_async_callback(server.stop)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stack.push_async_callback(channel.close)
    return pb_grpc.AudioChatServiceStub(channel), f"127.0.0.1:{port}"


@asynccontextmanager
async def serve_both() -> AsyncIterator[Both]:
    """Both local servers, and a service on each API (started in this event loop, stopped at the end)."""
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
        chat_stub, chat_target = await _serve(stack, TEST_SETTINGS, chat)
        realtime_stub, realtime_target = await _serve(stack, settings, realtime)
        routed_stub, _ = await _serve(stack, TEST_SETTINGS, routed)
        yield Both(
            chat_stub,
            realtime_stub,
            routed_stub,
            chat_server,
            realtime_server,
            chat_target,
            realtime_target,
            settings,
        )


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
