"""The per-turn event buffers that let an SSE client reconnect and get the rest of its turn, byte for byte.

A turn's encoded events are appended while it runs and kept `keep_seconds` after it ends. All buffers
count against one memory cap: past it, ended turns are dropped oldest first, then running ones stop being
resumable. A dropped turn still reaches the readers it has, and lets go of what they all have read.

A running turn with no reader is an orphan: its client left and may come back. After `orphan_seconds` with
no reader it is abandoned (its `on_abandoned` runs), so the upstream stops instead of streaming into nowhere.

Back-pressure: the task that reads a turn from the core waits (`ResumeStore.wait_for_room`) while its log
holds over `max_turn_bytes`, or all logs over `max_bytes`, so a slow or absent reader slows the core's
StreamTurn, and through gRPC's flow control the upstream, instead of growing memory. Past `max_turn_bytes`
a log lets go of what all its readers have read (a resume from before that point gets 404).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from prometheus_client import Histogram

from adapters.resume_store import Followable, LogMirror
from service.api_keys import digest


class TurnLog:
    """One turn's SSE events in order, followed by its live reader and by any resumer."""

    def __init__(self, turn_id: str, store: ResumeStore, owner: str | None = None) -> None:
        self.turn_id = turn_id
        self._owner = None if owner is None else digest(owner)  # the key that started the turn, if any
        self._store = store
        self._events: list[bytes] = []
        self._received_at: list[float] = []  # when each event came from the core, for the relay histogram
        self._first_sequence = 1  # sequence of _events[0]; grows once a dropped log lets its head go
        self._changed = asyncio.Event()
        self._readers: dict[int, int] = {}  # reader -> next sequence it reads
        self._reader_ids = itertools.count()
        self.done = False
        self.resumable = True
        self.size = 0
        self.abandoned = False
        self.on_abandoned: Callable[[], object] | None = None
        self.mirror: LogMirror | None = None  # a shared store's copy of this log (Redis), told of changes
        # The next sequence a reader on another pod reads (from the shared store), or 0 without one: it
        # holds events like a local reader does, so a log over its cap lets go only of what it has read.
        self.remote_next = 0

    def owned_by(self, key: str | None) -> bool:
        """Whether `key` may read this turn: the key that started it, or anyone for a turn started without."""
        if self._owner is None:
            return True
        return key is not None and hmac.compare_digest(digest(key), self._owner)

    @property
    def last_sequence(self) -> int:
        """Sequence of the newest event (0 before the first)."""
        return self._first_sequence + len(self._events) - 1

    def append(self, data: bytes, received_at: float = 0.0) -> None:
        """Add the next event; its sequence is last_sequence + 1, as the core numbers them."""
        self._events.append(data)
        self._received_at.append(received_at)
        self.size += len(data)
        self._changed.set()
        if self.mirror is not None:
            self.mirror.appended(self.last_sequence, data)
        self._store.grew(self, len(data))

    def finish(self) -> None:
        """No more events; the log now lives `keep_seconds` more for resumers."""
        self.done = True
        self._changed.set()
        if self.mirror is not None:
            self.mirror.ended(self.last_sequence)
        self._store.ended(self)

    def trim(self) -> None:
        """Over the per-turn cap, let go of what every reader has read (an orphan keeps all for a resume)."""
        if (self._readers or self.remote_next) and self.size > self._store.max_turn_bytes:
            self._release(force=True)

    def has_after(self, sequence: int) -> bool:
        """Whether every event after `sequence` is still held."""
        return self._first_sequence - 1 <= sequence <= self.last_sequence

    async def follow(
        self, after: int, heartbeat_seconds: float, relay: Histogram | None = None
    ) -> AsyncIterator[bytes]:
        """The events after sequence `after` until the turn ends; b"" after each quiet `heartbeat_seconds`.

        Once the reader has caught up, each event's time from the core to this reader goes to `relay`.
        """
        if not self.has_after(after):
            return
        reader = next(self._reader_ids)
        self._readers[reader] = after + 1
        live = False
        try:
            while True:
                while (position := self._readers[reader] - self._first_sequence) < len(self._events):
                    data = self._events[position]
                    received_at = self._received_at[position]
                    self._readers[reader] += 1
                    yield data
                    self._store.notify()  # a pump waiting for room may go on
                    if live and relay is not None and received_at:
                        relay.observe(time.perf_counter() - received_at)
                live = True
                if self.done:
                    return
                self._changed.clear()
                try:
                    async with asyncio.timeout(heartbeat_seconds):
                        await self._changed.wait()
                except TimeoutError:
                    yield b""
                self._release()
        finally:
            del self._readers[reader]
            self._release()
            if not self._readers and not self.done:
                self._store.orphaned(self)

    @property
    def orphan(self) -> bool:
        """Running, and no reader on this pod."""
        return not self._readers and not self.done and not self.abandoned

    def abandon_if_orphan(self) -> None:
        """Stop the turn if, still running, it has had no reader since it was orphaned."""
        if not self.orphan:
            return
        self.abandoned = True
        if self.on_abandoned is not None:
            self.on_abandoned()

    def drop(self) -> None:
        """Stop being resumable: from now on, what every reader has read is let go."""
        self.resumable = False
        self._release()

    def _release(self, force: bool = False) -> None:
        if self.resumable and not force:
            return
        positions = list(self._readers.values())
        if self.remote_next:
            positions.append(self.remote_next)
        upto = min(positions, default=self.last_sequence + 1)
        count = upto - self._first_sequence
        if count > 0:
            freed = sum(len(data) for data in self._events[:count])
            del self._events[:count]
            del self._received_at[:count]
            self._first_sequence = upto
            self.size -= freed
            if force and self.mirror is not None:
                self.mirror.released(upto)  # a dropped log's copy stays resumable; a trimmed one's head goes
            self._store.shrank(freed)


class ResumeStore:
    """Every turn's log under one byte cap; an ended log expires `keep_seconds` after its end."""

    def __init__(
        self,
        *,
        keep_seconds: float,
        max_bytes: int,
        orphan_seconds: float = 10.0,
        max_turn_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self.max_turn_bytes = max_turn_bytes
        self.orphan_seconds = orphan_seconds
        self.bytes = 0
        self._logs: OrderedDict[str, TurnLog] = OrderedDict()
        self._room = asyncio.Event()
        self._waiting = 0

    def full(self, log: TurnLog) -> bool:
        """Whether `log`'s pump must wait: its log, or all logs together, over their cap."""
        log.trim()
        return log.size > self.max_turn_bytes or self.bytes > self.max_bytes

    async def wait_for_room(self, log: TurnLog) -> None:
        """Return once `log` may take another event: readers caught up, or other turns let go."""
        while self.full(log):
            self._room.clear()
            self._waiting += 1
            try:
                await self._room.wait()
            finally:
                self._waiting -= 1

    def notify(self) -> None:
        """A reader advanced or bytes were let go: waiting pumps check again."""
        if self._waiting:
            self._room.set()

    def __len__(self) -> int:
        return len(self._logs)

    async def admit(self) -> None:
        """Memory always takes a new turn (its caps act on the turn's events)."""

    async def open(self, turn_id: str, owner: str | None = None) -> TurnLog:
        """A new log for a turn that just started; with an `owner` key, only that key may resume it."""
        return self.open_log(turn_id, owner)

    def open_log(self, turn_id: str, owner: str | None = None) -> TurnLog:
        """`open` without the wait: the log, in this process's memory."""
        log = TurnLog(turn_id, self, owner)
        self._logs[turn_id] = log
        return log

    def get(self, turn_id: str) -> TurnLog | None:
        """The log of a turn that runs, or ended less than keep_seconds ago."""
        return self._logs.get(turn_id)

    async def find(self, turn_id: str, after: int, key: str | None) -> Followable | None:
        """The log of `turn_id` if it holds every event after `after` and `key` may read it."""
        return self.find_local(turn_id, after, key)

    def find_local(self, turn_id: str, after: int, key: str | None) -> TurnLog | None:
        """`find` in this process's memory."""
        log = self._logs.get(turn_id)
        if log is None or not log.has_after(after) or not log.owned_by(key):
            return None
        return log

    async def close(self) -> None:
        """Nothing to flush: memory goes with the process."""

    def grew(self, log: TurnLog, added: int) -> None:
        """Count `added` bytes of `log`; evict if over the cap."""
        self.bytes += added
        if self.bytes > self.max_bytes:
            self._evict()
        if not log.resumable:
            log.drop()  # its live reader may be far enough along to let go of this already

    def orphaned(self, log: TurnLog) -> None:
        """A running log lost its last reader: abandon it unless one comes back in time."""
        asyncio.get_running_loop().call_later(self.orphan_seconds, log.abandon_if_orphan)

    def shrank(self, freed: int) -> None:
        """A log let `freed` bytes go."""
        self.bytes -= freed
        self.notify()

    def ended(self, log: TurnLog) -> None:
        """Schedule an ended log's expiry (a dropped one goes with its last reader)."""
        if log.resumable:
            asyncio.get_running_loop().call_later(self.keep_seconds, self._remove, log)
        else:
            log.drop()

    def _remove(self, log: TurnLog) -> None:
        if self._logs.get(log.turn_id) is log:
            del self._logs[log.turn_id]
        log.drop()  # with no reader left this frees everything; else what they have read

    def _evict(self) -> None:
        # Ended turns first (their clients most likely have everything), oldest first; then running ones.
        for ended in (True, False):
            for log in [log for log in self._logs.values() if log.done is ended]:
                if self.bytes <= self.max_bytes:
                    return
                self._remove(log)
