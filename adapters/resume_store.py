"""What the SSE routes need from a resume store, whichever keeps the events: this process or Redis.

Two implementations: `adapters.resume.ResumeStore` (in-process memory, the default) and
`adapters.resume_redis.RedisResumeStore` (AUDIOCHAT_REDIS_URL set: every turn also goes to a Redis Stream, so
a `Last-Event-ID` reaches the rest of the turn on any edge pod). The writing side is always a local
`TurnLog` (the fast path for this pod's own readers and its back-pressure); only finding and following a
turn started elsewhere differs.

Errors: `StoreUnavailable` when the store cannot take or serve a turn and AUDIOCHAT_REDIS_UNAVAILABLE is
`fail` (the route answers 503 `unavailable` with its retry delay). With `continue` the store never raises:
a turn it could not store goes on unresumable, and a resume it cannot serve is "not found".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from adapters.resume import TurnLog


class StoreUnavailable(Exception):
    """The store cannot be used now; retry after `retry_after_ms` (from AUDIOCHAT_REDIS_UNAVAILABLE=fail)."""

    def __init__(self, message: str, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class Followable(Protocol):
    """A stored turn a reader can follow."""

    def follow(
        self, after: int, heartbeat_seconds: float, relay: Histogram | None = None
    ) -> AsyncIterator[bytes]:
        """The encoded events after sequence `after`, as first sent, until the turn ends; b"" after each
        quiet `heartbeat_seconds` (time for a keep-alive). A turn that cannot go on ends with an error
        event."""
        ...


class LogMirror(Protocol):
    """Where a TurnLog copies what it holds (Redis), told in order; each call must return at once."""

    def appended(self, sequence: int, data: bytes) -> None:
        """Event `sequence` (its exact bytes) was added."""

    def released(self, first_sequence: int) -> None:
        """The log let go of every event before `first_sequence` (past its per-turn cap)."""

    def ended(self, last_sequence: int) -> None:
        """No event after `last_sequence` will come."""


class TurnStore(Protocol):
    """The SSE routes' view of a store; every method is bounded in time (Redis calls by their timeout)."""

    bytes: int  # bytes this process holds for resumes

    def __len__(self) -> int:
        """Turns this process holds: running, or ended less than keep_seconds ago."""
        ...

    async def admit(self) -> None:
        """Before a new turn calls the core: raise StoreUnavailable if it must be refused."""

    async def open(self, turn_id: str, owner: str | None = None) -> TurnLog:
        """The log of a turn that just started; with an `owner` key, only that key may resume it.
        Raises StoreUnavailable (fail mode) if the turn cannot be stored."""
        ...

    async def wait_for_room(self, log: TurnLog) -> None:
        """Return once `log` may take another event (back-pressure on the turn's reading from the core)."""

    async def find(self, turn_id: str, after: int, key: str | None) -> Followable | None:
        """The turn, if it holds every event after `after` and `key` may read it; else None (404).
        Raises StoreUnavailable (fail mode) if the store cannot be asked."""
        ...

    async def close(self) -> None:
        """Flush what is pending (bounded) and let go of connections; the edge calls it once drained."""
