"""The one place audiochat connects to Redis (redis-py's asyncio client), with every wait bounded.

Shared state (SSE resume, conversation resume) goes to Redis when `AUDIOCHAT_REDIS_URL` is set; without it
nothing here runs. Every command is bounded by `redis_timeout_seconds` (connect and reply), retried once
after a short back-off (a failover or a dropped idle connection), and then raises `redis.RedisError`
(`ConnectionError`, `TimeoutError`, or `ResponseError` such as OOM when Redis is full), which callers map
to the documented behaviour of `AUDIOCHAT_REDIS_UNAVAILABLE`: never a hang, never a crash.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Connections one process keeps to Redis; a command waiting for one past this many raises at once.
MAX_CONNECTIONS = 64
RETRIES = 1  # one more try after a broken connection or a timeout, then the caller is told
BACKOFF_CAP_SECONDS = 0.2


def connect(url: str, timeout_seconds: float) -> aioredis.Redis:
    """A client for `url` (redis://, rediss:// or unix://); connects lazily, on the first command.

    `timeout_seconds` bounds the TCP connect and each reply. Replies are bytes (decode_responses off):
    resume buffers hold the exact bytes sent, and only the caller knows which values are text.
    """
    retry = Retry(ExponentialBackoff(cap=BACKOFF_CAP_SECONDS, base=0.02), RETRIES)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_seconds,  # waiting for a free connection of the pool
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        socket_keepalive=True,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
