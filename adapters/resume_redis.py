"""SSE resume across edge pods: every turn's events also go to a Redis Stream, so any pod can serve the rest.

The writing pod keeps its in-memory `TurnLog` (its own readers read there, and its back-pressure works as
without Redis) and copies the log to Redis in the background: one writer task per process sends whatever
was appended since its last round in one pipeline, so a burst of events costs one round trip, off the
event's path. Keys of a turn (`{turn_id}` is a Redis Cluster hash tag: one slot per turn):

- `audiochat:sse:{turn_id}:events`: a Stream, one entry per event with the exact bytes sent (`d`), entry id
  `<sequence>-0`; the end is an entry `<last sequence>-1` with the field `end`. XADD ... MAXLEN ~
  `MAX_TURN_EVENTS`; past the per-turn byte cap (AUDIOCHAT_SSE_TURN_BUFFER_BYTES) the head goes as it goes
  from the local log (XTRIM MINID), so a resume from before it is "not found", as on one pod.
- `...:meta`: a hash with `owner`, the SHA-256 of the key that started the turn (empty: open edge), never
  the key itself.
- `...:alive`: present while the writing pod runs the turn (PX `alive_seconds`, refreshed every quarter of
  it). A reader on another pod that finds it gone before the end marker ends its stream with an `error`
  event (`unavailable`) instead of waiting for events that will never come.
- `...:reader`: present while a reader on another pod follows the turn (PX AUDIOCHAT_SSE_ORPHAN_SECONDS),
  holding the next sequence it reads: the writing pod neither abandons the turn as an orphan nor lets its
  log go past that reader's position.

TTLs: while running, `events` and `meta` expire AUDIOCHAT_RESUME_SECONDS plus `alive_seconds` after the
last heartbeat (a pod that dies leaves nothing for long); at the end, AUDIOCHAT_RESUME_SECONDS after it.

Failures (every call bounded by AUDIOCHAT_REDIS_TIMEOUT_SECONDS, one retry; each counted in
`audiochat_resume_store_errors_total{operation}`): a turn whose copy fails (Redis down, or full: OOM under
`maxmemory`) goes on for its live reader without a copy, and its keys are deleted once Redis answers
(DEL is allowed when Redis is full), so a resume elsewhere is "not found". With AUDIOCHAT_REDIS_UNAVAILABLE
`fail`, a new turn is refused `unavailable` (retry after `DOWN_RETRY_MS`) while Redis is down or full, a
turn is only started once its first write succeeded, and a resume Redis cannot answer is `unavailable`
instead of "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Histogram
from redis.exceptions import RedisError

from adapters.resume import ResumeStore, TurnLog
from adapters.resume_store import Followable, StoreUnavailable
from adapters.sse import encode_error
from service import metrics
from service.api_keys import digest

log = logging.getLogger(__name__)

MAX_TURN_EVENTS = 65_536  # entries of one turn's Stream (MAXLEN ~): far past the byte cap's usual count
BACKLOG_BYTES = 8 * 1024 * 1024  # appended, not yet in Redis (all turns): past it, pumps wait for the writer
DOWN_RETRY_MS = 1000  # fail mode: how long a Redis failure refuses new turns before Redis is tried again
PIPELINE_BYTES = 1024 * 1024  # one pipeline's event bytes at most (the rest go in the next round trip)
PIPELINE_OPS = 1024
READ_COUNT = 256  # entries per XREAD of a following reader
MAX_FORGET = 10_000  # turns whose keys wait to be deleted once Redis answers (older ones expire by TTL)
END = b"end"
DATA = b"d"


def _keys(turn_id: str) -> tuple[str, str, str, str]:
    base = f"audiochat:sse:{{{turn_id}}}"
    return f"{base}:events", f"{base}:meta", f"{base}:alive", f"{base}:reader"


def _entry_id(raw: object) -> tuple[int, int]:
    """(sequence, 0 for an event or 1 for the end marker) of a Stream entry id such as b"12-0"."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    milliseconds, _, part = text.partition("-")
    return int(milliseconds), int(part or 0)


def _already_added(result: BaseException) -> bool:
    """An XADD refused for an id the stream already has: a retried pipeline whose first try got through
    (each turn has one writer, adding in order), so the entry is there."""
    return "equal or smaller than the target stream top item" in str(result)


def _error(operation: str, exc: BaseException) -> None:
    metrics.RESUME_STORE_ERRORS.labels(operation).inc()
    log.warning("resume store %s failed: %s", operation, type(exc).__name__, extra={"error": str(exc)})


@dataclass(eq=False)
class _Op:
    mirror: _Mirror
    kind: str  # open, add, trim, end
    sequence: int = 0
    data: bytes = b""


class _Mirror:
    """One turn's copy in Redis; a broken one (a write failed) copies nothing more."""

    def __init__(self, store: RedisResumeStore, log: TurnLog, owner: str | None) -> None:
        self.store = store
        self.turn_id = log.turn_id  # not the log: a mirror waiting to be forgotten must not hold its events
        self.events, self.meta, self.alive, self.reader = _keys(log.turn_id)
        self.owner = b"" if owner is None else digest(owner)
        self.broken = False
        self.running = True
        self.expiring = False  # whether the Stream has its TTL (set with its first entry)
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        store.enqueue(_Op(self, "open"))

    def appended(self, sequence: int, data: bytes) -> None:
        if not self.broken:
            self.store.enqueue(_Op(self, "add", sequence, data))

    def released(self, first_sequence: int) -> None:
        if not self.broken:
            self.store.enqueue(_Op(self, "trim", first_sequence))

    def ended(self, last_sequence: int) -> None:
        self.running = False
        if not self.broken:
            self.store.enqueue(_Op(self, "end", last_sequence))

    def fail(self) -> None:
        """Stop copying; the keys go once Redis answers, so a resume elsewhere is "not found"."""
        if self.broken:
            return
        self.broken = True
        self.running = False
        if not self.opened.done():
            self.opened.set_result(False)
        self.store.forget(self)


class _RemoteTurn:
    """A turn another pod writes (or wrote): followed from its Redis Stream."""

    def __init__(self, store: RedisResumeStore, turn_id: str) -> None:
        self.store = store
        self.turn_id = turn_id
        self.events, _, self.alive, self.reader = _keys(turn_id)

    async def follow(
        self, after: int, heartbeat_seconds: float, relay: Histogram | None = None
    ) -> AsyncIterator[bytes]:
        """XREAD BLOCK from `after` on, registering as this turn's reader each round, until the end marker;
        an error event if Redis fails, the writer goes away, or the events a reader needs were trimmed."""
        store, client = self.store, self.store.client
        loop = asyncio.get_running_loop()
        next_sequence, last_id = after + 1, f"{after}-0"
        # XREAD's BLOCK must end before the client's reply timeout; 0 would block forever.
        block_ms = max(1, int(1000 * min(heartbeat_seconds, store.timeout_seconds / 2)))
        quiet_since = loop.time()
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.set(self.reader, next_sequence, px=store.reader_ms)
                    pipe.xread({self.events: last_id}, count=READ_COUNT, block=block_ms)
                    pipe.exists(self.alive)
                    registered, streams, alive = await pipe.execute(raise_on_error=False)
                for result in (streams, alive):
                    if isinstance(result, BaseException):
                        raise result
                if isinstance(registered, BaseException):
                    _error("reader", registered)  # Redis full: the read goes on, unregistered
            except RedisError as exc:
                _error("read", exc)
                yield self._end(next_sequence, "the resume store became unreachable; retry later")
                return
            entries: list[tuple[bytes, dict[bytes, bytes]]] = streams[0][1] if streams else []
            for raw_id, fields in entries:
                sequence, part = _entry_id(raw_id)
                if part or END in fields:
                    return
                if sequence != next_sequence:
                    yield self._end(
                        next_sequence, "events of this turn were let go before this reader read them"
                    )
                    return
                yield fields[DATA]
                next_sequence, last_id = sequence + 1, raw_id.decode()
            if entries:
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= heartbeat_seconds:
                quiet_since = loop.time()
                yield b""
            if alive:
                continue
            # The writer is gone: ended (its end marker came after our XREAD) or died mid-turn.
            try:
                last = await client.xrevrange(self.events, count=1)
            except RedisError as exc:
                _error("read", exc)
                yield self._end(next_sequence, "the resume store became unreachable; retry later")
                return
            newest = _entry_id(last[0][0]) if last else (0, 0)
            if newest[1]:
                if newest > _entry_id(last_id):
                    continue  # the end marker is past what we read: the next XREAD returns it
                return  # ended at or before `after`
            yield self._end(next_sequence, "the edge streaming this turn went away before its end")
            return

    def _end(self, sequence: int, message: str) -> bytes:
        return encode_error(self.turn_id, sequence, {"code": "unavailable", "message": message})


class RedisResumeStore(ResumeStore):
    """The memory store, with every turn copied to Redis and turns of other pods found and followed there."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        keep_seconds: float,
        max_bytes: int,
        orphan_seconds: float = 10.0,
        max_turn_bytes: int = 8 * 1024 * 1024,
        timeout_seconds: float = 1.0,
        fail_when_down: bool = False,
        alive_seconds: float = 5.0,
    ) -> None:
        super().__init__(
            keep_seconds=keep_seconds,
            max_bytes=max_bytes,
            orphan_seconds=orphan_seconds,
            max_turn_bytes=max_turn_bytes,
        )
        self.client = client
        self.timeout_seconds = timeout_seconds
        self.fail_when_down = fail_when_down
        self.alive_ms = max(1, int(1000 * max(alive_seconds, 2 * timeout_seconds)))
        self.reader_ms = max(1, int(1000 * max(orphan_seconds, 2 * timeout_seconds)))
        self._keep_ms = max(1, math.ceil(1000 * keep_seconds))
        self._queue: list[_Op] = []
        self._backlog = 0
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._running: set[_Mirror] = set()
        self._forget: set[str] = set()  # turns whose keys are deleted once Redis answers
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._down_at: float | None = None  # loop time of the last failure, None while Redis answers
        self._closing = False

    # The write side.

    async def admit(self) -> None:
        """Fail mode: refuse while Redis is known down; after DOWN_RETRY_MS, a PING decides."""
        if not self.fail_when_down or self._down_at is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._down_at < DOWN_RETRY_MS / 1000:
            raise self._unavailable()
        try:
            await self.client.ping()
        except RedisError as exc:
            _error("admit", exc)
            self._down_at = loop.time()
            raise self._unavailable() from None
        self._down_at = None

    async def probe(self) -> str | None:
        """At start: why Redis cannot be used ("ConnectionError", "TimeoutError"...), or None when it answers.
        A failure counts as one: fail mode refuses turns until Redis answers."""
        try:
            await self.client.ping()
        except RedisError as exc:
            _error("admit", exc)
            self._down_at = asyncio.get_running_loop().time()
            return type(exc).__name__
        return None

    async def open(self, turn_id: str, owner: str | None = None) -> TurnLog:
        """The local log, copied to Redis; fail mode waits for the first write (StoreUnavailable if it fails).
        Continue mode skips the copy while Redis is known down (the turn is resumable on this pod only)."""
        log = self.open_log(turn_id, owner)
        loop = asyncio.get_running_loop()
        down = self._down_at is not None and loop.time() - self._down_at < DOWN_RETRY_MS / 1000
        if down and not self.fail_when_down:
            return log
        mirror = _Mirror(self, log, owner)
        log.mirror = mirror
        self._running.add(mirror)
        if self.fail_when_down and not await mirror.opened:
            log.mirror = None
            self._running.discard(mirror)
            self.forget_local(log)
            raise self._unavailable()
        return log

    def forget_local(self, log: TurnLog) -> None:
        """Remove a log that never started (its turn was refused)."""
        if self.get(log.turn_id) is log:
            del self._logs[log.turn_id]
        log.drop()

    def enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        self._backlog += len(op.data)
        self._wake.set()
        if self._writer is None and not self._closing:
            self._writer = asyncio.create_task(self._write_loop(), name="resume-store-writer")

    def forget(self, mirror: _Mirror) -> None:
        self._running.discard(mirror)
        if len(self._forget) < MAX_FORGET:
            self._forget.add(mirror.turn_id)
        self._wake.set()

    async def wait_for_room(self, log: TurnLog) -> None:
        """As the memory store, also waiting while the copy lags BACKLOG_BYTES behind, and letting go of
        what a reader on another pod has read (its position is polled while the log is full)."""
        while self._backlog > BACKLOG_BYTES and not self._closing:
            self._flushed.clear()
            await self._flushed.wait()
        mirror = log.mirror
        while self.full(log):
            if isinstance(mirror, _Mirror) and not mirror.broken:
                try:
                    position = await self.client.get(mirror.reader)
                except RedisError as exc:
                    _error("reader", exc)
                    position = None
                if position is not None and int(position) > log.remote_next:
                    log.remote_next = int(position)
                    continue  # full() trims up to it
            self._room.clear()
            self._waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.05, self.timeout_seconds / 4)):
                        await self._room.wait()
            finally:
                self._waiting -= 1

    def orphaned(self, log: TurnLog) -> None:
        """As the memory store, but a reader on another pod keeps the turn going."""
        asyncio.get_running_loop().call_later(self.orphan_seconds, self._check_orphan, log)

    def _check_orphan(self, log: TurnLog) -> None:
        if not log.orphan:
            return
        mirror = log.mirror
        if not isinstance(mirror, _Mirror) or mirror.broken:
            log.abandon_if_orphan()
            return
        task = asyncio.create_task(self._orphan_or_remote(log, mirror))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _orphan_or_remote(self, log: TurnLog, mirror: _Mirror) -> None:
        try:
            followed = bool(await self.client.exists(mirror.reader))
        except RedisError as exc:
            _error("reader", exc)
            followed = False
        if followed and log.orphan:
            asyncio.get_running_loop().call_later(self.orphan_seconds, self._check_orphan, log)
        else:
            log.abandon_if_orphan()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        beat_every = self.alive_ms / 4000
        next_beat = loop.time() + beat_every
        while True:
            if not self._queue and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                        await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            beat = loop.time() >= next_beat
            if beat:
                next_beat = loop.time() + beat_every
            if batch or beat or self._forget:
                try:
                    await self._flush(batch, beat)
                except Exception:  # a bug here must not leave pumps waiting on a writer that is gone
                    log.exception("resume store writer failed")
                    for mirror in {op.mirror for op in batch} | set(self._running):
                        mirror.fail()
            self._backlog -= sum(len(op.data) for op in batch)
            self._flushed.set()
            if self._closing and not self._queue:
                return

    def _take(self) -> list[_Op]:
        """The oldest queued ops up to one pipeline's worth (PIPELINE_BYTES, PIPELINE_OPS), so each round trip
        stays well inside the reply timeout however far the writer fell behind."""
        size = count = 0
        for count, op in enumerate(self._queue, start=1):
            size += len(op.data)
            if size >= PIPELINE_BYTES or count >= PIPELINE_OPS:
                break
        batch, self._queue = self._queue[:count], self._queue[count:]
        if self._queue:
            self._wake.set()
        return batch

    async def _flush(self, batch: list[_Op], beat: bool) -> None:
        """One pipeline: the batch's writes, heartbeats of running turns, deletions of broken ones."""
        pipe = self.client.pipeline(transaction=False)
        owners: list[tuple[_Mirror | None, str]] = []  # per command: whose, and which operation
        running_ms = self._keep_ms + self.alive_ms
        for op in batch:
            mirror = op.mirror
            if mirror.broken:
                continue
            if op.kind == "open":
                pipe.hset(mirror.meta, "owner", mirror.owner)
                pipe.pexpire(mirror.meta, running_ms)
                pipe.set(mirror.alive, b"1", px=self.alive_ms)
                owners += [(mirror, "open")] * 3
            elif op.kind == "add":
                pipe.xadd(
                    mirror.events,
                    {DATA: op.data},
                    id=f"{op.sequence}-0",
                    maxlen=MAX_TURN_EVENTS,
                    approximate=True,
                )
                owners.append((mirror, "write"))
                if not mirror.expiring:  # from then on the heartbeats renew it
                    mirror.expiring = True
                    pipe.pexpire(mirror.events, running_ms)
                    owners.append((mirror, "write"))
            elif op.kind == "trim":
                pipe.xtrim(mirror.events, minid=f"{op.sequence}-0", approximate=False)
                owners.append((mirror, "write"))
            else:  # end
                pipe.xadd(mirror.events, {END: b""}, id=f"{op.sequence}-1")
                pipe.pexpire(mirror.events, self._keep_ms)
                pipe.pexpire(mirror.meta, self._keep_ms)
                pipe.delete(mirror.alive)
                owners += [(mirror, "write")] * 4
                self._running.discard(mirror)
        if beat:
            for mirror in self._running:
                if mirror.broken or not mirror.opened.done():
                    continue
                pipe.set(mirror.alive, b"1", px=self.alive_ms)
                pipe.pexpire(mirror.meta, running_ms)
                pipe.pexpire(mirror.events, running_ms)
                owners += [(mirror, "heartbeat")] * 3
        forgotten = list(self._forget)
        for turn_id in forgotten:
            pipe.delete(*_keys(turn_id))
            owners.append((None, "forget"))
        if not owners:
            return
        try:
            results = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            _error(owners[0][1], exc)
            self._down_at = asyncio.get_running_loop().time()
            # Redis may come back empty (a restart): no running copy can be trusted to be whole.
            for broken in {op.mirror for op in batch} | set(self._running):
                broken.fail()
            return
        failed: set[_Mirror] = set()
        forget_failed = False
        for (whose, operation), result in zip(owners, results, strict=True):
            if not isinstance(result, BaseException) or _already_added(result):
                continue
            if whose is None:
                forget_failed = True
            elif whose not in failed:
                failed.add(whose)
                _error(operation, result)
        if failed:
            self._down_at = asyncio.get_running_loop().time()
        else:
            self._down_at = None
        if not forget_failed:
            for turn_id in forgotten:
                self._forget.discard(turn_id)
        for op in batch:
            if op.kind == "open" and not op.mirror.opened.done():
                op.mirror.opened.set_result(op.mirror not in failed)
        for mirror in failed:
            mirror.fail()

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(
            "the resume store (Redis) is unavailable; retry later", retry_after_ms=DOWN_RETRY_MS
        )

    # The read side.

    async def find(self, turn_id: str, after: int, key: str | None) -> Followable | None:
        """This pod's log if it has the turn, else the Redis Stream: the owner must match, every event after
        `after` must still be there (or, while the writer runs, may still come)."""
        local = self.find_local(turn_id, after, key)
        if local is not None:
            return local
        events, meta, alive, _ = _keys(turn_id)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hget(meta, "owner")
                pipe.xrange(events, count=1)
                pipe.xrevrange(events, count=1)
                pipe.exists(alive)
                owner, first, last, running = await pipe.execute()
        except RedisError as exc:
            _error("find", exc)
            if self.fail_when_down:
                raise self._unavailable() from None
            return None
        if owner is None or not first or not last:
            return None
        if owner and (key is None or not hmac.compare_digest(digest(key), owner)):
            return None
        first_sequence = _entry_id(first[0][0])[0]
        last_sequence, end = _entry_id(last[0][0])
        if after < first_sequence - 1:
            return None  # the head was let go (per-turn cap)
        if after > last_sequence and (end or not running):
            return None  # past the end (a resumer's id may be ahead of our copy only while it runs)
        return _RemoteTurn(self, turn_id)

    async def close(self) -> None:
        """Send what is pending (each call bounded by the timeout), then close the connections."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, RedisError):
                async with asyncio.timeout(4 * self.timeout_seconds + 1):
                    await asyncio.shield(self._writer)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._writer
        for task in list(self._tasks):
            task.cancel()
        await self.client.aclose()
