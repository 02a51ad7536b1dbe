"""What every route of one edge shares: the core's stubs, keys, origins, resume buffers, drain state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from starlette.requests import HTTPConnection

from adapters.auth import ApiKeys, Origins
from adapters.resume_store import TurnStore
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service import metrics
from service.api_keys import bearer_metadata
from service.observe import TRANSPORT_METADATA_KEY
from service.settings import Settings


def transport_metadata(transport: str, key: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata of a call to the core: which edge it came through (for metrics), and the client's key.

    The client's own key goes on to the core, which checks it too when it has keys (role all shares them).
    """
    return ((TRANSPORT_METADATA_KEY, transport), *bearer_metadata(key))


@dataclass
class EdgeContext:
    """One edge's shared state; routes find it as `request.app.state.edge`."""

    settings: Settings
    channel: grpc.aio.Channel
    keys: ApiKeys
    origins: Origins
    store: TurnStore
    stub: Any = None  # AudioChatServiceStub (typed only in the .pyi)
    health: Any = None  # HealthStub
    drain: asyncio.Event = field(default_factory=asyncio.Event)  # set once the edge stops taking work
    cut: asyncio.Event = field(default_factory=asyncio.Event)  # set when the drain grace is over
    # Calls to the core that a cut cancels (each reader then ends its stream saying why).
    calls: set[Any] = field(default_factory=set)
    active_streams: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Turns read into a resume buffer outlive their HTTP response; kept here to end them at shutdown.
    pumps: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def draining(self) -> bool:
        """Whether a drain has started: new work is refused, /readyz answers 503."""
        return self.drain.is_set()

    def __post_init__(self) -> None:
        self.stub = pb_grpc.AudioChatServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.idle.set()

    @contextmanager
    def stream(self) -> Iterator[None]:
        """Count a running stream, so a drain can wait for the last one."""
        self.active_streams += 1
        metrics.EDGE_ACTIVE_STREAMS.inc()
        self.idle.clear()
        try:
            yield
        finally:
            self.active_streams -= 1
            metrics.EDGE_ACTIVE_STREAMS.dec()
            if self.active_streams == 0:
                self.idle.set()


@contextmanager
def cancelled_on_cut(edge: EdgeContext, call: Any) -> Iterator[None]:
    """Register `call` so that the end of the drain grace cancels it."""
    edge.calls.add(call)
    try:
        yield
    finally:
        edge.calls.discard(call)


def cut_by_the_edge(call: Any) -> bool:
    """Whether a CancelledError came from `call` being cancelled by a cut, not from this task's own."""
    task = asyncio.current_task()
    return bool(call.cancelled()) and task is not None and not task.cancelling()


def edge_of(connection: HTTPConnection) -> EdgeContext:
    """The EdgeContext of the app serving `connection`."""
    context: EdgeContext = connection.app.state.edge
    return context
