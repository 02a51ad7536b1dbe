"""SSE resume across edge pods on a real redis-server: two edges (real uvicorn, each with its own Redis
client) in front of one core; a turn started on edge A is resumed on edge B, byte for byte, live and after.
Redis stopped, full, or a writer that dies: the documented answer, never a hang (pytest-timeout bounds it)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from adapters.resume_redis import RedisResumeStore
from service import metrics
from service.redis_client import connect
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.events import expected
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.test_edge_sse import blocks, fold, parse
from tests.upstream_server import FixtureUpstream

SLOW = "slow/audio_no_finish_reason"
TIMEOUT = 0.5  # AUDIOCHAT_REDIS_TIMEOUT_SECONDS of these edges


def store_errors(operation: str) -> float:
    value = metrics.EDGE_REGISTRY.get_sample_value(
        "audiochat_resume_store_errors_total", {"operation": operation}
    )
    return value or 0.0


async def two_edges(
    start_edge: StartEdge, server: RedisServer, **overrides: object
) -> tuple[RunningEdge, RunningEdge]:
    settings = {"redis_url": server.url, "redis_timeout_seconds": TIMEOUT, "heartbeat_seconds": 0.05}
    settings.update(overrides)
    a = await start_edge(**settings)
    b = await start_edge(a.service, **settings)
    return a, b


async def drop_after(edge: RunningEdge, deltas: int, **headers: str) -> list[bytes]:
    """POST a slow turn on `edge`, read until `deltas` text/audio deltas, then drop the connection."""
    first = bytearray()
    async with (
        httpx.AsyncClient(base_url=edge.base_url, headers=headers) as client,
        client.stream("POST", "/v1/turns", json={"text": "Hi", "model": SLOW}) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            first += chunk
            got = sum(parse(block)[0] in ("audio.delta", "text.delta") for block in blocks(bytes(first)))
            if got >= deltas:
                break
    return blocks(bytes(first))


async def get_events(edge: RunningEdge, last_id: str, **headers: str) -> httpx.Response:
    turn_id = last_id.rpartition(":")[0]
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=20) as client:
        return await client.get(f"/v1/turns/{turn_id}/events", headers={"Last-Event-ID": last_id, **headers})


async def reader_registered(server: RedisServer, turn_id: str) -> None:
    """Wait until an edge follows `turn_id` from Redis (its reader key is set)."""
    client = connect(server.url, TIMEOUT)
    try:
        for _ in range(1000):  # 10 s at most
            if await client.exists(f"audiochat:sse:{{{turn_id}}}:reader"):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no edge follows {turn_id} from Redis")
    finally:
        await client.aclose()


@pytest.fixture
async def flushed(redis_server: RedisServer) -> AsyncIterator[RedisServer]:  # noqa: F811
    """The module's Redis, running and empty."""
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.flushall()
    client.close()
    yield redis_server
    if not redis_server.running:
        redis_server.start()


async def test_resume_on_another_edge_while_streaming_and_after(
    start_edge: StartEdge, flushed: RedisServer, upstream: FixtureUpstream
) -> None:
    a, b = await two_edges(start_edge, flushed)
    kept = await drop_after(a, 8)
    last_id = parse(kept[-1])[1]
    turn_id = last_id.rpartition(":")[0]
    store = a.server.context.store if a.server.context else None
    assert isinstance(store, RedisResumeStore)
    local = store.get(turn_id)
    assert local is not None and not local.done, "the turn still streams on A while B resumes it"
    live = await get_events(b, last_id)  # B follows A's turn live, from Redis
    assert live.status_code == 200
    rest = blocks(live.content)
    after = await get_events(b, f"{turn_id}:0")  # and after its end, the whole turn
    on_a = await get_events(a, f"{turn_id}:0")
    assert after.status_code == on_a.status_code == 200
    assert kept + rest == blocks(after.content) == blocks(on_a.content), "byte-identical on both pods"
    folded = fold(kept + rest)
    assert folded["sha256"] == expected("audio_no_finish_reason")["audio_sha256"]
    assert folded["last"][0] == "turn.completed"
    assert upstream.streams_started == 1, "the model is called once"
    # The last id of an ended turn: nothing more, not an error; an id past the end is not found.
    end_id = parse(rest[-1])[1]
    at_end = await get_events(b, end_id)
    past_end = await get_events(b, f"{turn_id}:{int(end_id.rpartition(':')[2]) + 5}")
    assert (at_end.status_code, at_end.content) == (200, b"")
    assert past_end.status_code == 404


async def test_resume_by_another_key_is_refused_on_the_other_edge(
    start_edge: StartEdge, flushed: RedisServer
) -> None:
    a, b = await two_edges(start_edge, flushed, api_keys="key-one,key-two")
    kept = await drop_after(a, 4, authorization="Bearer key-one")
    last_id = parse(kept[-1])[1]
    foreign = await get_events(b, last_id, authorization="Bearer key-two")
    none = await get_events(b, last_id)
    own = await get_events(b, last_id, authorization="Bearer key-one")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
    assert none.status_code == 401
    assert own.status_code == 200 and fold(kept + blocks(own.content))["last"][0] == "turn.completed"
    client = redis.Redis(host="127.0.0.1", port=flushed.port)
    try:
        turn_id = last_id.rpartition(":")[0]
        stored = client.hgetall(f"audiochat:sse:{{{turn_id}}}:meta")
    finally:
        client.close()
    assert stored == {b"owner": hashlib.sha256(b"key-one").digest()}, "a hash of the key, never the key"


async def test_a_draining_edge_leaves_its_turns_resumable_elsewhere(
    start_edge: StartEdge, flushed: RedisServer
) -> None:
    # A short orphan time on A: only B's reader registration keeps A from stopping the turn.
    a, b = await two_edges(start_edge, flushed, sse_orphan_seconds=0.3, drain_seconds=10.0)
    kept = await drop_after(a, 4)
    drain = asyncio.create_task(a.server.stop())
    await asyncio.sleep(0)
    resumed = await get_events(b, parse(kept[-1])[1])
    await asyncio.wait_for(drain, 10)
    assert resumed.status_code == 200
    folded = fold(kept + blocks(resumed.content))
    assert folded["last"][0] == "turn.completed", "A finished the turn while draining; B relayed all of it"
    assert folded["sha256"] == expected("audio_no_finish_reason")["audio_sha256"]


async def test_redis_stopped_mid_turn_continue(
    start_edge: StartEdge, flushed: RedisServer, upstream: FixtureUpstream
) -> None:
    a, b = await two_edges(start_edge, flushed)
    errors = store_errors("write") + store_errors("heartbeat") + store_errors("open")
    first = bytearray()
    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=a.base_url) as client,
        client.stream("POST", "/v1/turns", json={"text": "Hi", "model": SLOW}) as response,
    ):
        async for chunk in response.aiter_raw():
            first += chunk
            if len(blocks(bytes(first))) >= 5 and flushed.running:
                last_id = parse(blocks(bytes(first))[-1])[1]
                follower = asyncio.create_task(get_events(b, last_id))
                await reader_registered(flushed, last_id.rpartition(":")[0])
                flushed.stop()  # Redis goes away mid-turn, while B follows the turn
    live = blocks(bytes(first))
    assert fold(live)["sha256"] == expected("audio_no_finish_reason")["audio_sha256"], (
        "the live reader lost nothing"
    )
    followed = await asyncio.wait_for(follower, 10)
    assert followed.status_code == 200
    tail = blocks(followed.content)
    assert parse(tail[-1])[0] == "error" and parse(tail[-1])[2]["error"]["code"] == "unavailable"
    assert time.monotonic() - started < 15
    # Redis down: a resume elsewhere is "not found" (continue mode), quickly.
    gone = await get_events(b, parse(live[3])[1])
    assert gone.status_code == 404
    assert store_errors("write") + store_errors("heartbeat") + store_errors("open") > errors
    flushed.start()  # back, empty: new turns are resumable elsewhere again
    await asyncio.sleep(1.1)  # past the store's retry delay
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        again = await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
    turn_id = parse(blocks(again.content)[0])[1].rpartition(":")[0]
    resumed = await get_events(b, f"{turn_id}:0")
    assert resumed.status_code == 200 and blocks(resumed.content) == blocks(again.content)


async def test_redis_down_fail_mode_refuses_new_turns_with_a_retry_delay(
    start_edge: StartEdge, flushed: RedisServer, upstream: FixtureUpstream
) -> None:
    a, _ = await two_edges(start_edge, flushed, redis_unavailable="fail")
    flushed.stop()
    try:
        async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as client:
            started = time.monotonic()
            refused = await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
            took = time.monotonic() - started
            again = await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
            resume = await client.get("/v1/turns/turn_x/events", headers={"Last-Event-ID": "turn_x:2"})
    finally:
        flushed.start()
    assert refused.status_code == again.status_code == resume.status_code == 503
    assert refused.json()["error"]["code"] == "unavailable"
    assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "1000"
    assert took < 6 * TIMEOUT, "bounded by the Redis timeout"
    assert upstream.streams_started <= 1, "a store known down refuses before the model is called"
    await asyncio.sleep(1.1)
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        served = await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
    assert served.status_code == 200 and fold(blocks(served.content))["last"][0] == "turn.completed"


async def test_redis_down_at_start(
    start_edge: StartEdge, flushed: RedisServer, upstream: FixtureUpstream
) -> None:
    flushed.stop()
    settings = {"redis_url": flushed.url, "redis_timeout_seconds": TIMEOUT}
    failing = await start_edge(redis_unavailable="fail", **settings)
    going_on = await start_edge(failing.service, redis_unavailable="continue", **settings)
    body = {"text": "Hi", "model": "fixture/text_only"}
    async with httpx.AsyncClient(timeout=20) as client:
        refused = await client.post(f"{failing.base_url}/v1/turns", json=body)
        assert upstream.streams_started == 0, "refused before the model is called"
        served = await client.post(f"{going_on.base_url}/v1/turns", json=body)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert served.status_code == 200 and fold(blocks(served.content))["last"][0] == "turn.completed"


@pytest.mark.parametrize("mode", ["continue", "fail"])
async def test_redis_full_mid_turn(start_edge: StartEdge, mode: str) -> None:
    full = RedisServer(maxmemory_bytes=64 << 20)  # noeviction: past maxmemory, writes get OOM
    full.start()
    admin = redis.Redis(host="127.0.0.1", port=full.port)
    try:
        a, b = await two_edges(start_edge, full, redis_unavailable=mode)
        first, filled = bytearray(), False
        async with (
            httpx.AsyncClient(base_url=a.base_url, timeout=20) as http,
            http.stream("POST", "/v1/turns", json={"text": "Hi", "model": SLOW}) as response,
        ):
            async for chunk in response.aiter_raw():
                first += chunk
                if len(blocks(bytes(first))) >= 5 and not filled:
                    admin.config_set("maxmemory", 1)  # Redis is full from here on
                    filled = True
        # The live reader got everything; the copy failed (OOM) and its keys went: a resume is not found.
        folded = fold(blocks(bytes(first)))
        assert folded["sha256"] == expected("audio_no_finish_reason")["audio_sha256"]
        turn_id = folded["last"][1].rpartition(":")[0]
        assert (await get_events(b, f"{turn_id}:3")).status_code == 404
        assert not admin.keys(f"audiochat:sse:{{{turn_id}}}:*"), "deleted (DEL works when Redis is full)"
        async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
            second = await http.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
        if mode == "continue":
            assert second.status_code == 200 and fold(blocks(second.content))["last"][0] == "turn.completed"
        else:
            assert second.status_code == 503 and second.json()["error"]["code"] == "unavailable"
            await asyncio.sleep(1.1)  # retry delay over: PING answers (a full Redis does), the write fails
            async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
                third = await http.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
    finally:
        admin.close()
        full.stop()


async def test_a_reader_elsewhere_ends_when_the_writer_dies(flushed: RedisServer) -> None:
    def store() -> RedisResumeStore:
        return RedisResumeStore(
            connect(flushed.url, 0.1),
            keep_seconds=5,
            max_bytes=1 << 20,
            timeout_seconds=0.1,
            alive_seconds=0.3,
        )

    writer, reader = store(), store()
    try:
        log = await writer.open("turn_dies")
        for sequence in (1, 2, 3):
            log.append(b"event: text.delta\nid: turn_dies:%d\ndata: {}\n\n" % sequence)
        await asyncio.sleep(0.2)
        assert writer._writer is not None
        writer._writer.cancel()  # the pod dies: no end marker, no more heartbeats
        found = await reader.find("turn_dies", 1, None)
        assert found is not None
        started = time.monotonic()
        got = [data async for data in found.follow(1, heartbeat_seconds=0.05)]
        assert time.monotonic() - started < 3, "bounded by the liveness key's TTL"
        events = [data for data in got if data]
        assert events[:2] == [
            b"event: text.delta\nid: turn_dies:2\ndata: {}\n\n",
            b"event: text.delta\nid: turn_dies:3\ndata: {}\n\n",
        ]
        assert events[2].startswith(b"event: error\nid: turn_dies:4\n") and b'"unavailable"' in events[2]
    finally:
        await writer.client.aclose()
        await reader.close()


async def test_a_slow_reader_elsewhere_holds_the_writer_back_and_loses_nothing(
    flushed: RedisServer,
) -> None:
    cap, size, count = 20_000, 1000, 120

    def store() -> RedisResumeStore:
        return RedisResumeStore(
            connect(flushed.url, 0.2),
            keep_seconds=5,
            max_bytes=1 << 20,
            max_turn_bytes=cap,
            timeout_seconds=0.2,
        )

    writer, reader = store(), store()
    sent = [b"%04d" % n + b"x" * (size - 4) for n in range(1, count + 1)]
    held: list[int] = []

    async def pump() -> None:
        log = await writer.open("turn_slow")
        for data in sent:
            log.append(data)
            await writer.wait_for_room(log)
            held.append(log.size)
        log.finish()

    try:
        pumping = asyncio.create_task(pump())
        await asyncio.sleep(0.1)
        found = await reader.find("turn_slow", 0, None)
        assert found is not None
        got = []
        async for data in found.follow(0, heartbeat_seconds=1.0):
            if data:
                got.append(data)
                await asyncio.sleep(0.002)  # slower than the pump
        await asyncio.wait_for(pumping, 5)
        assert got == sent, "every event, in order, to the reader on the other pod"
        assert max(held) <= cap + size, "the writer's log held back, not grown"
        raw = connect(flushed.url, 0.2)
        try:
            assert await raw.xlen("audiochat:sse:{turn_slow}:events") <= cap // size + 2, "and so did Redis"
        finally:
            await raw.aclose()
    finally:
        await writer.close()
        await reader.close()
