"""The conversation store on Redis (redis-py asyncio, through `service.redis_client`): any replica resumes.

Keys, all with the conversation id as hash tag (one cluster slot per conversation):
- `audiochat:conv:{ID}` hash: owner, config, epoch, turn (latest), saved (latest turn the history includes);
  expires `ttl_seconds` after its last change.
- `audiochat:conv:{ID}:log:TURN` stream: the turn's events, entry id `0-SEQUENCE`, field `e`; expires
  with the conversation, or 30 s after the next turn starts.
- `audiochat:conv:{ID}:live:TURN`: set while a writer runs the turn, a lease it renews with each write
  (and at least every LEASE_SECONDS / 3); a follower that finds it gone and no TurnCompleted reports a cut.
- `audiochat:conv:{ID}:cancel:TURN`: played_ms of an interrupt asked for by a resumer on another process.

Compare-and-set writes are Lua scripts (one round trip, atomic). A redis.RedisError (down, timed out,
full: `OOM command not allowed`) becomes StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import NotOwner, StoreUnavailable, UnknownConversation
from service.redis_client import connect
from service.state.conversations import FOLLOW_POLL_SECONDS, Attached, TurnLog

LEASE_SECONDS = 3.0  # a writer silent this long is gone (its process died or lost Redis)
OLD_LOG_SECONDS = 30  # a finished turn's log outlives the start of the next by this much (slow followers)
CANCEL_SECONDS = 60

T = TypeVar("T")  # what a store call returns

_ATTACH = """
local v = redis.call('HMGET', KEYS[1], 'owner', 'config', 'turn', 'saved')
if not v[2] then return {0} end
if v[1] ~= ARGV[1] then return {1} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {2, v[2], epoch, v[3] or '', v[4] or ''}
"""
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local held
if ARGV[2] ~= '0' then held = redis.call('HGET', KEYS[1], 'epoch') == ARGV[2]
else held = redis.call('HGET', KEYS[1], 'turn') == ARGV[3] end
if not held then return 0 end
redis.call('HSET', KEYS[1], 'config', ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'saved', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
_OPEN_TURN = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return -1 end
if epoch ~= ARGV[1] then return 0 end
local old = redis.call('HGET', KEYS[1], 'turn')
if old and old ~= '' then redis.call('PEXPIRE', KEYS[1] .. ':log:' .. old, ARGV[5]) end
redis.call('HSET', KEYS[1], 'turn', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
return 1
"""


class RedisConversationStore:
    """Conversations in Redis, for `ttl_seconds` after their last change; every call bounded by the
    client's timeout (`AUDIOCHAT_REDIS_TIMEOUT_SECONDS`)."""

    def __init__(self, url: str, timeout_seconds: float, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._client: aioredis.Redis = connect(url, timeout_seconds)
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        # A blocking read must answer before the client's own reply timeout.
        self._block_ms = max(1, int(min(FOLLOW_POLL_SECONDS, timeout_seconds / 2) * 1000))
        self._attach = self._client.register_script(_ATTACH)
        self._save = self._client.register_script(_SAVE)
        self._open_turn = self._client.register_script(_OPEN_TURN)

    @staticmethod
    def _meta(conversation_id: str) -> str:
        return f"audiochat:conv:{{{conversation_id}}}"

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except RedisError as exc:
            raise StoreUnavailable(f"the conversation store failed to {what}: {type(exc).__name__}") from exc

    async def create(self, conversation_id: str, owner: str, config: bytes) -> int:
        meta = self._meta(conversation_id)

        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                fields = {"owner": owner, "config": config, "epoch": 1, "turn": "", "saved": ""}
                pipe.hset(meta, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(meta, self._ttl_ms)
                await pipe.execute()

        await self._call("store a new conversation", run)
        return 1

    async def attach(self, conversation_id: str, owner: str) -> Attached:
        meta = self._meta(conversation_id)
        reply: list[Any] = await self._call(
            "find the conversation", lambda: self._attach(keys=[meta], args=[owner, self._ttl_ms])
        )
        if reply[0] == 0:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        if reply[0] == 1:
            raise NotOwner("this conversation was started with another API key")
        return Attached(bytes(reply[1]), int(reply[2]), _text(reply[3]), _text(reply[4]))

    async def load(self, conversation_id: str) -> Attached:
        meta = self._meta(conversation_id)
        values: list[Any] = await self._call(
            "load the conversation", lambda: self._client.hmget(meta, ["config", "epoch", "turn", "saved"])
        )
        if values[0] is None:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        return Attached(bytes(values[0]), int(values[1] or 0), _text(values[2]), _text(values[3]))

    async def save(self, conversation_id: str, config: bytes, *, epoch: int = 0, turn_id: str = "") -> bool:
        meta = self._meta(conversation_id)
        saved = await self._call(
            "save the conversation",
            lambda: self._save(keys=[meta], args=[config, epoch, turn_id, self._ttl_ms]),
        )
        return bool(saved)

    async def open_turn(self, conversation_id: str, epoch: int, turn_id: str) -> bool:
        meta = self._meta(conversation_id)
        args: list[str | int] = [
            epoch,
            turn_id,
            self._ttl_ms,
            int(LEASE_SECONDS * 1000),
            OLD_LOG_SECONDS * 1000,
        ]
        opened = await self._call(
            "start a turn", lambda: self._open_turn(keys=[meta, f"{meta}:live:{turn_id}"], args=args)
        )
        if opened == -1:
            raise UnknownConversation(f"no conversation {conversation_id!r}: unknown or expired")
        return bool(opened)

    async def append(self, conversation_id: str, turn_id: str, first: int, events: list[bytes]) -> int | None:
        meta = self._meta(conversation_id)
        log = f"{meta}:log:{turn_id}"

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for offset, event in enumerate(events):
                    pipe.xadd(log, {"e": event}, id=f"0-{first + offset}")
                if events:
                    pipe.pexpire(log, self._ttl_ms)
                pipe.set(f"{meta}:live:{turn_id}", "1", px=int(LEASE_SECONDS * 1000))
                pipe.get(f"{meta}:cancel:{turn_id}")
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self._call("record the answer", run)
        cancel = replies[-1]
        return int(cancel) if cancel is not None else None

    async def close_turn(self, conversation_id: str, turn_id: str) -> None:
        live = f"{self._meta(conversation_id)}:live:{turn_id}"
        await self._call("end a turn", lambda: self._client.delete(live))

    async def read(self, conversation_id: str, turn_id: str, after: int) -> TurnLog:
        meta = self._meta(conversation_id)
        log = f"{meta}:log:{turn_id}"
        reply: Any = await self._call(
            "read the answer",
            lambda: self._client.xread({log: f"0-{after}"}, count=512, block=self._block_ms),
        )
        if reply:
            return TurnLog([bytes(fields[b"e"]) for _, fields in reply[0][1]], True)
        live = await self._call("check the answer", lambda: self._client.exists(f"{meta}:live:{turn_id}"))
        if live:
            return TurnLog([], True)
        # The writer may have written its last events between the two reads.
        rest: Any = await self._call("read the answer", lambda: self._client.xrange(log, f"(0-{after}"))
        return TurnLog([bytes(fields[b"e"]) for _, fields in rest], False)

    async def request_cancel(self, conversation_id: str, turn_id: str, played_ms: int) -> None:
        key = f"{self._meta(conversation_id)}:cancel:{turn_id}"
        await self._call("ask for an interrupt", lambda: self._client.set(key, played_ms, ex=CANCEL_SECONDS))

    async def aclose(self) -> None:
        await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
