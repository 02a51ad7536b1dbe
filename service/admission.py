"""Admission: the core's two bounded counts, running turns and open conversations.

A running turn holds an upstream HTTP stream and the CPU to relay it; an open conversation between turns
holds only its history. They are bounded separately, so a thousand idle conversations never keep a
StreamTurn (or another conversation's next turn) from running:

- `max_turns` (AUDIOCHAT_MAX_STREAMS): StreamTurn calls plus Converse turns running now. A StreamTurn over
  it is refused RESOURCE_EXHAUSTED; a conversation's turn over it ends in-band with a RESOURCE_EXHAUSTED
  turn error, and the conversation goes on. Both carry `retry_after_ms`.
- `max_conversations` (AUDIOCHAT_MAX_CONVERSATIONS): open Converse calls. One over it is refused
  RESOURCE_EXHAUSTED with `retry_after_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from service.errors import Overloaded, ShuttingDown

DEFAULT_MAX_CONVERSATIONS = 10_000
REFUSAL_LINGER_SECONDS = 0.25  # at most this long a refused client may finish writing
RETRY_AFTER_MS = 1000  # what a refused client is told to wait: slots free up as turns end, in ms


class Admission:
    """Counts of running turns and open conversations, each under its own limit."""

    def __init__(self, *, max_turns: int, max_conversations: int) -> None:
        self.max_turns = max_turns
        self.max_conversations = max_conversations
        self.running_turns = 0
        self.open_conversations = 0
        self.draining = False

    @contextmanager
    def turn(self, gauge: Gauge) -> Iterator[None]:
        """Hold a turn slot; Overloaded when all are taken."""
        if self.running_turns >= self.max_turns:
            raise Overloaded(f"the server is at its limit of {self.max_turns} running turns", RETRY_AFTER_MS)
        self.running_turns += 1
        gauge.inc()
        try:
            yield
        finally:
            self.running_turns -= 1
            gauge.dec()

    @contextmanager
    def conversation(self, gauge: Gauge) -> Iterator[None]:
        """Hold a conversation slot; ShuttingDown while draining, Overloaded when all are taken."""
        self.refuse_if_draining()
        if self.open_conversations >= self.max_conversations:
            raise Overloaded(
                f"the server is at its limit of {self.max_conversations} open conversations", RETRY_AFTER_MS
            )
        self.open_conversations += 1
        gauge.inc()
        try:
            yield
        finally:
            self.open_conversations -= 1
            gauge.dec()

    def refuse_if_draining(self) -> None:
        """ShuttingDown once a drain has started: new calls go to another instance."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another instance")


async def let_client_finish_writing(requests: AsyncIterator[object]) -> None:
    """Before refusing a streamed call, read (and drop) what its client still writes, for a moment.

    A status that arrives while the client's gRPC library still writes is lost to the client: the failed
    write reports INTERNAL "Internal error from Core" instead of the status. The refused client waits
    its retry delay anyway, so telling it up to REFUSAL_LINGER_SECONDS later costs nothing.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSAL_LINGER_SECONDS):
            async for _ in requests:
                pass
