"""SSE slow readers: bounded buffers per turn and in total, back-pressure to the upstream, nothing lost.

The bound is read from the resume store's own accounting once the fault upstream's writes have stalled,
so the test needs no timing: a buffer that grew without bound would hold the whole answer by then.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from adapters.resume import ResumeStore
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.fault_upstream import FaultUpstream, pattern_pcm
from tests.test_backpressure_cancel import assert_upstream_closed, backpressured, leave_http_stream

SECONDS = 400  # 19 MB of pcm16, 26 MB as SSE: over the caps below and over what socket and gRPC windows hold
TURN_CAP = 256 * 1024
TOTAL_CAP = 640 * 1024
EVENT_SLACK = 16 * 1024  # one audio event (100 ms: 6.4 kB of base64) may land past a cap


async def slow_edge(start_edge: StartEdge, **overrides: Any) -> RunningEdge:
    return await start_edge(sse_turn_buffer_bytes=TURN_CAP, resume_buffer_bytes=TOTAL_CAP, **overrides)


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


async def test_a_slow_reader_is_bounded_and_back_pressures_the_upstream(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await slow_edge(start_edge)
    store = store_of(edge)
    async with (
        httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client,
        client.stream("POST", "/v1/turns", json={"model": f"long/{SECONDS}", "text": "hi"}) as response,
    ):
        reader = response.aiter_raw()
        body = bytearray(await anext(reader))
        await backpressured(upstream)
        assert store.bytes <= TURN_CAP + EVENT_SLACK
        assert upstream.bytes_sent < SECONDS * 48_000, "the upstream must be held back, not read to its end"
        async for piece in reader:
            body += piece
    audio, completed = audio_of(bytes(body))
    assert completed["reason"] == "stop"
    assert audio == pattern_pcm(SECONDS * 48_000), "a slow reader gets every byte, in order"


async def test_many_slow_readers_share_the_total_cap(start_edge: StartEdge, upstream: FaultUpstream) -> None:
    edge = await slow_edge(start_edge)
    store = store_of(edge)
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        streams = [
            client.stream("POST", "/v1/turns", json={"model": f"long/{SECONDS}", "text": "hi"})
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
    edge = await slow_edge(start_edge, sse_orphan_seconds=0.05)
    left_at = await leave_http_stream(
        edge, "/v1/turns", {"model": f"long/{SECONDS}", "text": "talk"}, upstream
    )
    await assert_upstream_closed(upstream, edge.service, left_at + 0.05)
    assert store_of(edge).bytes <= TURN_CAP + EVENT_SLACK
