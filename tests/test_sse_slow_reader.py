"""SSE slow readers: bounded buffers per turn and in total, back-pressure to the upstream, nothing lost.

The bound is read from the resume store's own accounting once the fault upstream's writes have stalled,
so the test needs no timing: a buffer that grew without bound would hold the whole answer by then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from adapters.resume import ResumeStore
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.fault_upstream import FaultUpstream, pattern_pcm
from tests.test_backpressure_cancel import assert_upstream_closed, backpressured, leave_http_stream

SECONDS = 200  # 9.6 MB of pcm16, 12.8 MB as SSE: over the caps below and the edge socket's 4 MiB send buffer
# 2000 s: 128 MB as upstream SSE, built as it is sent. Loopback TCP buffers autotune to tens of MB
# (tcp_rmem's maximum is 32 MiB on CI) at every hop, so only an answer far larger than all of them shows
# that the upstream is held back rather than read to its end.
HUGE_SECONDS = 2000
TURN_CAP = 256 * 1024
TOTAL_CAP = 640 * 1024
Reader = AsyncIterator[bytes]
EVENT_SLACK = 16 * 1024  # one audio event (100 ms: 6.4 kB of base64) may land past a cap


async def slow_edge(start_edge: StartEdge) -> RunningEdge:
    """Small caps; a turn its client left is abandoned at once, so the edge's drain need not wait for it."""
    return await start_edge(
        sse_turn_buffer_bytes=TURN_CAP, resume_buffer_bytes=TOTAL_CAP, sse_orphan_seconds=0.05
    )


def slow_client(edge: RunningEdge) -> httpx.AsyncClient:
    """A client whose socket holds little (64 KiB), so the edge's own buffer is what fills."""
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)]
    transport = httpx.AsyncHTTPTransport(socket_options=options)
    return httpx.AsyncClient(base_url=edge.base_url, timeout=30, transport=transport)


def store_of(edge: RunningEdge) -> ResumeStore:
    context = edge.server.context
    assert context is not None and isinstance(context.store, ResumeStore)
    return context.store


def audio_of(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The audio of an SSE body, in order, and its turn.completed."""
    audio, completed = bytearray(), {}
    for block in body.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if lines.get(b"event") == b"audio.delta":
            data = json.loads(lines[b"data"])
            assert data["start_sample"] * 2 == len(audio)
            audio += base64.b64decode(data["data"])
        elif lines.get(b"event") == b"turn.completed":
            completed = json.loads(lines[b"data"])
    return bytes(audio), completed


@asynccontextmanager
async def slow_turn(start_edge: StartEdge, seconds: int) -> AsyncIterator[tuple[ResumeStore, Reader, bytes]]:
    """An SSE turn of `seconds` of audio on a small-capped edge whose client read one piece and stopped:
    the edge's store, the rest of the body (read it or leave it), and that first piece."""
    edge = await slow_edge(start_edge)
    async with (
        slow_client(edge) as client,
        client.stream("POST", "/v1/turns", json={"model": f"long/{seconds}", "text": "hi"}) as response,
    ):
        reader = response.aiter_raw()  # kept: a dropped generator would close the response
        yield store_of(edge), reader, await anext(reader)


async def test_a_slow_reader_is_bounded_and_back_pressures_the_upstream(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    async with slow_turn(start_edge, HUGE_SECONDS) as (store, _, _):
        await backpressured(upstream)
        assert store.bytes <= TURN_CAP + EVENT_SLACK
        assert upstream.bytes_sent < HUGE_SECONDS * 48_000 // 2


async def test_a_slow_reader_gets_every_byte_after_the_cap_held_it_back(start_edge: StartEdge) -> None:
    async with slow_turn(start_edge, SECONDS) as (store, reader, first):
        body = bytearray(first)
        while store.bytes < TURN_CAP - EVENT_SLACK:  # noqa: ASYNC110 (the store has no event for it)
            await asyncio.sleep(0.05)  # the turn's buffer is full: the edge has stopped reading the core
        async for piece in reader:
            body += piece
    audio, completed = audio_of(bytes(body))
    assert completed["reason"] == "stop"
    assert audio == pattern_pcm(SECONDS * 48_000), "a slow reader gets every byte, in order"


async def test_many_slow_readers_share_the_total_cap(start_edge: StartEdge, upstream: FaultUpstream) -> None:
    edge = await slow_edge(start_edge)
    store = store_of(edge)
    async with slow_client(edge) as client:
        streams = [
            client.stream("POST", "/v1/turns", json={"model": f"long/{HUGE_SECONDS}", "text": "hi"})
            for _ in range(4)
        ]
        responses = [await stream.__aenter__() for stream in streams]
        readers = [response.aiter_raw() for response in responses]
        for reader in readers:
            await anext(reader)
        await backpressured(upstream)
        assert store.bytes <= TOTAL_CAP + 4 * EVENT_SLACK
        for stream in streams:
            await stream.__aexit__(None, None, None)


async def test_an_abandoned_backpressured_turn_closes_its_upstream(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await slow_edge(start_edge)
    left_at = await leave_http_stream(
        edge, "/v1/turns", {"model": f"long/{HUGE_SECONDS}", "text": "talk"}, upstream
    )
    await assert_upstream_closed(upstream, edge.service, left_at + 0.05)
    assert store_of(edge).bytes <= TURN_CAP + EVENT_SLACK
