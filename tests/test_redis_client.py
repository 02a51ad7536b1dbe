"""The Redis client's bounds against a real redis-server: it answers, fails fast when Redis is gone, and
recovers when Redis is back on the same address."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from service.redis_client import connect
from service.settings import from_environment
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

TIMEOUT = 0.5


async def test_round_trip_and_recovery(redis_server: RedisServer) -> None:  # noqa: F811
    client = connect(redis_server.url, TIMEOUT)
    try:
        assert await client.set("k", b"\x00\xff bytes") is True
        assert await client.get("k") == b"\x00\xff bytes"  # bytes as stored, no decoding
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(redis.RedisError):
            await client.get("k")
        assert time.monotonic() - started < 4 * TIMEOUT  # told, not hung
        redis_server.start()
        assert await client.ping() is True  # the same client reconnects by itself
    finally:
        await client.aclose()


async def test_a_silent_server_times_out() -> None:
    # A listener that accepts and never answers: the reply deadline, not the connect one, must end the wait.
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(redis.RedisError):
            await client.ping()
        assert time.monotonic() - started < 6 * TIMEOUT  # one try, one retry, each bounded
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUDIOCHAT_REDIS_URL", "http://127.0.0.1:6379"),
        ("AUDIOCHAT_REDIS_UNAVAILABLE", "ignore"),
        ("AUDIOCHAT_REDIS_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_settings_are_named(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        from_environment({name: value})


def test_the_url_is_not_printed() -> None:
    settings = from_environment({"AUDIOCHAT_REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0"})
    assert "s3cret" not in repr(settings)
