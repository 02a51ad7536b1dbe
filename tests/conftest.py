"""Shared fixtures: a local upstream speaking the real wire format, and real gRPC servers on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest

from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.server import AudioChatServer
from service.settings import Settings
from service.upstream import OpenAIUpstream
from tests.edge_fixtures import edge, start_edge  # noqa: F401 (fixtures of the edge tests)
from tests.fault_upstream import FaultUpstream

TEST_SETTINGS = Settings(
    openai_api_key="sk-test",
    upstream="openai",
    bind="127.0.0.1",
    grpc_port=0,
    drain_seconds=5.0,
    upstream_max_retries=0,
    upstream_timeout_seconds=10.0,
)


@dataclass
class RunningService:
    """A started AudioChatServer and a channel to it."""

    server: AudioChatServer
    channel: grpc.aio.Channel
    stub: Any  # AudioChatServiceAsyncStub (typed only in the .pyi)
    target: str


StartService = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def upstream() -> AsyncIterator[FaultUpstream]:
    """The local OpenAI-compatible server serving the fixture captures and injecting faults."""
    async with FaultUpstream() as server:
        yield server


@pytest.fixture
async def start_service(upstream: FaultUpstream) -> AsyncIterator[StartService]:
    """Start services against `upstream` with setting overrides; all are stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(base_url: str | None = None, **overrides: Any) -> RunningService:
            settings = replace(TEST_SETTINGS, **overrides)
            client = OpenAIUpstream(
                api_key=settings.openai_api_key,
                base_url=base_url or upstream.base_url,
                deadlines=settings.deadlines,
            )
            stack.push_async_callback(client.close)
            server = AudioChatServer(settings, client)
            port = await server.start()
            stack.push_async_callback(server.stop)
            target = f"127.0.0.1:{port}"
            channel = grpc.aio.insecure_channel(target)
            stack.push_async_callback(channel.close)
            return RunningService(server, channel, pb_grpc.AudioChatServiceStub(channel), target)

        yield start


@pytest.fixture
async def service(start_service: StartService) -> RunningService:
    """A service with the test settings."""
    return await start_service()
