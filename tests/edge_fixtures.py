"""An edge (uvicorn on an ephemeral port) in front of a real gRPC service, for the edge tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pytest

from adapters.edge_server import EdgeServer

if TYPE_CHECKING:  # conftest imports this module to register its fixtures
    from tests.conftest import RunningService, StartService


@dataclass
class RunningEdge:
    """A started edge, the service behind it, and its URLs."""

    server: EdgeServer
    service: RunningService
    base_url: str  # http://127.0.0.1:PORT
    ws_url: str  # ws://127.0.0.1:PORT/v1/converse


StartEdge = Callable[..., Awaitable[RunningEdge]]


@pytest.fixture
async def start_edge(start_service: StartService) -> AsyncIterator[StartEdge]:
    """Start a service and an edge in front of it with setting overrides; stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(service: RunningService | None = None, **overrides: Any) -> RunningEdge:
            service = service or await start_service()
            settings = replace(service.server.settings, http_port=0, **overrides)
            server = EdgeServer(settings, service.target)
            port = await server.start()
            stack.push_async_callback(server.stop)
            return RunningEdge(
                server, service, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/converse"
            )

        yield start


def sdk_audio(delta: Any) -> dict[str, Any]:
    """The audio fields an openai SDK chunk delta carried (a dict, or a model in newer SDKs)."""
    audio = getattr(delta, "audio", None)
    if audio is None or isinstance(audio, dict):
        return audio or {}
    fields: dict[str, Any] = audio.model_dump(exclude_unset=True)
    return fields


@pytest.fixture
async def edge(start_edge: StartEdge) -> RunningEdge:
    """An open edge (no keys, any origin) with fast heartbeats."""
    return await start_edge(heartbeat_seconds=0.02)
