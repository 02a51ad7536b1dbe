"""The conversation store: what a Converse call needs to be continued by another call, on any replica.

Per conversation: its config with the history as it stands (a serialized `ConverseConfig`), the SHA-256 of
the API key that started it, an epoch (bumped by each resume: the newest call holds the conversation, and
an older call's writes are refused), and the log of its latest turn (each event as sent, in order) with
a liveness flag (a lease in Redis) and a pending cancel request from a resumer on another process.

Two implementations behind one interface: `MemoryConversationStore` (one process: resume works after a
dropped connection, on the same server) and `RedisConversationStore` (any replica). Every call either
answers within the store's timeout or raises `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import NotOwner, UnknownConversation

# A follower (resumer) waits this long per poll for new events before it checks the writer is alive.
FOLLOW_POLL_SECONDS = 0.5

# What the in-process store holds beyond the payload bytes, counted against its byte cap so that the cap
# bounds memory, not payload (a text delta's event is ~50 bytes; its Python object costs as much again).
# Per event: the bytes object's header (33 bytes, rounded up by the allocator) and its list slot (8).
# Per conversation: its record, id and owner strings and dict entry; per turn log: the log, its list, its
# asyncio.Event and turn id. Measured with tracemalloc by tests/test_conversation_store_bounds.py, which
# fails when the count drifts from what is held.
EVENT_OVERHEAD_BYTES = 48
CONVERSATION_OVERHEAD_BYTES = 450
TURN_LOG_OVERHEAD_BYTES = 750


def owner_digest(key: str | None) -> str:
    """The stored form of the API key a conversation was started with: hex SHA-256, or "" for none."""
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


@dataclass(frozen=True, slots=True)
class Attached:
    """A conversation as a resume finds it; `epoch` is the resuming call's (newer than every other's)."""

    config: bytes  # serialized ConverseConfig; its history is the conversation's history now
    epoch: int
    turn_id: str  # the latest turn, "" if none
    saved_turn_id: str  # the latest turn whose end the history includes


@dataclass(frozen=True, slots=True)
class TurnLog:
    """One read of a turn's log: the events (serialized TurnEvents) after the asked sequence, in order,
    and whether a writer still runs the turn (False once it ended, or its lease ran out)."""

    events: list[bytes]
    live: bool


class ConversationStore(Protocol):
    """Where conversations wait for a resume. Every method raises StoreUnavailable when the store fails."""

    ttl_seconds: float

    async def create(self, conversation_id: str, owner: str, config: bytes) -> int:
        """Store a new conversation; its epoch (1)."""

    async def attach(self, conversation_id: str, owner: str) -> Attached:
        """A resume: the stored conversation, under a new epoch. UnknownConversation, NotOwner."""

    async def load(self, conversation_id: str) -> Attached:
        """The stored conversation as it is now (same epoch). UnknownConversation."""

    async def save(self, conversation_id: str, config: bytes, *, epoch: int = 0, turn_id: str = "") -> bool:
        """Replace the config (history): with `epoch`, if the conversation is still held at it; with
        `turn_id` (a turn's end), if that is still its latest turn, and mark it saved. False when
        refused (a newer call holds it, another turn started, or it expired)."""

    async def open_turn(self, conversation_id: str, epoch: int, turn_id: str) -> bool:
        """Start a new turn's log, if still held at `epoch`; False when a newer call holds it.
        UnknownConversation when the store lost it (expired while its call was idle; Redis restarted)."""

    async def append(self, conversation_id: str, turn_id: str, first: int, events: list[bytes]) -> int | None:
        """Add events (sequences `first`, `first + 1`...) to the turn's log and renew its lease; the
        played_ms of a cancel a resumer asked for, or None."""

    async def close_turn(self, conversation_id: str, turn_id: str) -> None:
        """The writer stops writing this turn (it ended, was cut, or outgrew the log)."""

    async def read(self, conversation_id: str, turn_id: str, after: int) -> TurnLog:
        """The turn's events after sequence `after`, waiting up to FOLLOW_POLL_SECONDS for one."""

    async def request_cancel(self, conversation_id: str, turn_id: str, played_ms: int) -> None:
        """Ask the writer of a turn (on any process) to interrupt it, as if its client had."""

    async def aclose(self) -> None:
        """Release connections."""


@dataclass(slots=True)
class _Log:
    turn_id: str
    events: list[bytes] = field(default_factory=list)
    live: bool = True
    cancel_ms: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True)
class _Record:
    owner: str
    config: bytes
    epoch: int
    expires_at: float
    turn_id: str = ""
    saved_turn_id: str = ""
    log: _Log | None = None
    # Bytes counted against the store's cap: the config and the last turn's events, with the overheads
    # above (see EVENT_OVERHEAD_BYTES).
    size: int = 0


class MemoryConversationStore:
    """This process's conversations: at most `max_conversations`, and `max_bytes` of memory for configs and
    last turns' events in all, their Python objects counted (see EVENT_OVERHEAD_BYTES); the least recently
    changed go first. Each is kept `ttl_seconds` after its last change. Expired ones are let go whenever
    anything changes, not only when asked for, so a busy process holds what the last `ttl_seconds` left,
    bounded by `max_bytes`, never its whole history."""

    def __init__(
        self, ttl_seconds: float, max_conversations: int, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._max = max_conversations
        self._max_bytes = max_bytes
        self.bytes = 0
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        """Conversations held now (expired ones included until the next change lets them go)."""
        return len(self._records)

    def _get(self, conversation_id: str) -> _Record | None:
        record = self._records.get(conversation_id)
        if record is not None and record.expires_at <= time.monotonic():
            self._drop(conversation_id)
            return None
        return record

    def _touch(self, conversation_id: str, record: _Record) -> None:
        record.expires_at = time.monotonic() + self.ttl_seconds
        self._records.move_to_end(conversation_id)

    def _resize(self, record: _Record, size: int) -> None:
        self.bytes += size - record.size
        record.size = size
        self._shrink()

    def _shrink(self) -> None:
        """Let go of expired conversations, then of the least recently changed while over a cap."""
        now = time.monotonic()
        while self._records:
            conversation_id, oldest = next(iter(self._records.items()))
            over = len(self._records) > self._max or self.bytes > self._max_bytes
            if not over and oldest.expires_at > now:
                return
            self._drop(conversation_id)

    def _drop(self, conversation_id: str) -> None:
        record = self._records.pop(conversation_id)
        self.bytes -= record.size
        if record.log is not None and record.log.live:
            record.log.live = False  # a follower of its turn ends instead of waiting on it
            record.log.touch()

    async def create(self, conversation_id: str, owner: str, config: bytes) -> int:
        record = _Record(owner, config, 1, time.monotonic() + self.ttl_seconds)
        self._records[conversation_id] = record
        self._resize(record, CONVERSATION_OVERHEAD_BYTES + len(config))
        return 1

    async def attach(self, conversation_id: str, owner: str) -> Attached:
        record = self._get(conversation_id)
        if record is None:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        if record.owner != owner:
            raise NotOwner("this conversation was started with another API key")
        record.epoch += 1
        self._touch(conversation_id, record)
        return Attached(record.config, record.epoch, record.turn_id, record.saved_turn_id)

    async def load(self, conversation_id: str) -> Attached:
        record = self._get(conversation_id)
        if record is None:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        return Attached(record.config, record.epoch, record.turn_id, record.saved_turn_id)

    async def save(self, conversation_id: str, config: bytes, *, epoch: int = 0, turn_id: str = "") -> bool:
        record = self._get(conversation_id)
        if record is None or not (record.epoch == epoch if epoch else record.turn_id == turn_id):
            return False
        grown = len(config) - len(record.config)
        record.config = config
        if turn_id:
            record.saved_turn_id = turn_id
        self._touch(conversation_id, record)
        self._resize(record, record.size + grown)
        return True

    async def open_turn(self, conversation_id: str, epoch: int, turn_id: str) -> bool:
        record = self._get(conversation_id)
        if record is None:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        if record.epoch != epoch:
            return False
        if record.log is not None:
            record.log.live = False
            record.log.touch()
        record.turn_id, record.log = turn_id, _Log(turn_id)
        self._touch(conversation_id, record)
        # The previous turn's events are let go.
        self._resize(record, CONVERSATION_OVERHEAD_BYTES + TURN_LOG_OVERHEAD_BYTES + len(record.config))
        return True

    def _log(self, conversation_id: str, turn_id: str) -> _Log | None:
        record = self._get(conversation_id)
        log = record.log if record is not None else None
        return log if log is not None and log.turn_id == turn_id else None

    async def append(self, conversation_id: str, turn_id: str, first: int, events: list[bytes]) -> int | None:
        log = self._log(conversation_id, turn_id)
        if log is None:
            return None
        log.events.extend(events)
        log.touch()
        cancel_ms = log.cancel_ms
        record = self._records[conversation_id]
        added = sum(len(event) for event in events) + EVENT_OVERHEAD_BYTES * len(events)
        self._resize(record, record.size + added)
        return cancel_ms

    async def close_turn(self, conversation_id: str, turn_id: str) -> None:
        log = self._log(conversation_id, turn_id)
        if log is not None:
            log.live = False
            log.touch()

    async def read(self, conversation_id: str, turn_id: str, after: int) -> TurnLog:
        log = self._log(conversation_id, turn_id)
        if log is None:
            return TurnLog([], False)
        if len(log.events) <= after and log.live:
            changed = log.changed
            try:
                async with asyncio.timeout(FOLLOW_POLL_SECONDS):
                    await changed.wait()
            except TimeoutError:
                pass
        return TurnLog(log.events[after:], log.live)

    async def request_cancel(self, conversation_id: str, turn_id: str, played_ms: int) -> None:
        log = self._log(conversation_id, turn_id)
        if log is not None and log.live:
            log.cancel_ms = played_ms
            log.touch()

    async def aclose(self) -> None:
        self._records.clear()
        self.bytes = 0
