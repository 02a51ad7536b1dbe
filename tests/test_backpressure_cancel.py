"""A client that stops reading while the answer streams, then leaves: the upstream closes at once.

(Conversations here keep no orphan grace: with one, the turn runs on for a resume and is cut at the
grace's end, tested in test_conversation_resume.py.)

Every transport and exit path: gRPC StreamTurn and Converse cancelled, a WebSocket closed, an
OpenAI-compatible stream closed, an SSE turn abandoned by its client (during an upstream stall here;
the SSE slow reader is in test_sse_slow_reader.py). The upstream is the fault upstream
writing a long answer as fast as it is read, so the gateway's queues are full when the client leaves.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService, StartService
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.events import text_request
from tests.fault_upstream import FaultUpstream

# 2000 s of audio (128 MB as upstream SSE, built as it is sent): far more than every buffer between the
# upstream and the client (loopback TCP buffers autotune to 32 MiB each on CI).
LONG = "long/2000"
STALL = "silent/8/audio_no_finish_reason"  # some audio, then silence until the client leaves
# Generous: the point is that it closes (it stayed open over 70 s), not how fast this machine is.
CLOSE_WITHIN_SECONDS = 2.0


async def backpressured(upstream: FaultUpstream) -> None:
    """Wait until the upstream's writes stall because nobody reads (buffers full), with its stream open."""
    while upstream.open_streams == 0 and not upstream.closed_at:  # noqa: ASYNC110 (no event for it)
        await asyncio.sleep(0.01)
    last = -1
    while upstream.bytes_sent != last and upstream.open_streams:
        last = upstream.bytes_sent
        await asyncio.sleep(0.3)
    assert upstream.open_streams, "the upstream ran to its end: nothing held it back"


async def assert_upstream_closed(upstream: FaultUpstream, service: RunningService, left_at: float) -> None:
    async with asyncio.timeout(CLOSE_WITHIN_SECONDS):
        await upstream.idle()
    assert upstream.closed_at[-1] - left_at < CLOSE_WITHIN_SECONDS
    async with asyncio.timeout(CLOSE_WITHIN_SECONDS):
        while service.server.servicer.active_streams:  # noqa: ASYNC110 (the servicer has no event for it)
            await asyncio.sleep(0.01)


async def test_stream_turn_cancelled_while_backpressured(
    service: RunningService, upstream: FaultUpstream
) -> None:
    call = service.stub.StreamTurn(text_request(LONG))
    await call.read()
    await backpressured(upstream)
    left_at = time.monotonic()
    call.cancel()
    await assert_upstream_closed(upstream, service, left_at)


async def test_converse_cancelled_while_backpressured(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(conversation_orphan_seconds=0)  # no grace kept for a resume
    call = service.stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=LONG))))
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="talk")))
    await call.read()
    await backpressured(upstream)
    left_at = time.monotonic()
    call.cancel()
    await assert_upstream_closed(upstream, service, left_at)


async def test_converse_half_closed_then_cancelled(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(conversation_orphan_seconds=0)
    call = service.stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=LONG))))
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="talk")))
    await call.done_writing()  # the conversation waits for the answer to end: another exit path
    await backpressured(upstream)
    left_at = time.monotonic()
    call.cancel()
    await assert_upstream_closed(upstream, service, left_at)


async def test_websocket_closed_while_backpressured(
    start_edge: StartEdge, start_service: StartService, upstream: FaultUpstream
) -> None:
    edge = await start_edge(await start_service(conversation_orphan_seconds=0))
    ws = await connect(edge.ws_url, max_queue=1, compression=None)
    await ws.send(json.dumps({"type": "config", "model": LONG}))
    await ws.recv()
    await ws.send(json.dumps({"type": "text", "text": "talk"}))
    await backpressured(upstream)
    left_at = time.monotonic()
    ws.transport.abort()  # the client vanishes without a close handshake
    await assert_upstream_closed(upstream, edge.service, left_at)
    await ws.close()


async def leave_http_stream(
    edge: RunningEdge, path: str, body: dict[str, Any], upstream: FaultUpstream | None = None
) -> float:
    """Open a streamed POST, read its first bytes, stop reading (till `upstream` is back-pressured), leave."""
    async with (
        httpx.AsyncClient(base_url=edge.base_url) as client,
        client.stream("POST", path, json=body) as response,
    ):
        body_reader = response.aiter_raw()  # kept: a collected iterator would close the response early
        await anext(body_reader)
        if upstream is not None:
            await backpressured(upstream)
        return time.monotonic()


def compat_body(model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "talk"}]}


async def test_compat_stream_closed_while_backpressured(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await start_edge()
    left_at = await leave_http_stream(edge, "/v1/chat/completions", compat_body(LONG), upstream)
    await assert_upstream_closed(upstream, edge.service, left_at)


async def test_compat_client_leaves_during_an_upstream_stall(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await start_edge()
    left_at = await leave_http_stream(edge, "/v1/chat/completions", compat_body(STALL))
    await assert_upstream_closed(upstream, edge.service, left_at)


async def test_sse_client_leaves_during_an_upstream_stall(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await start_edge(sse_orphan_seconds=0.05, heartbeat_seconds=30)
    left_at = await leave_http_stream(edge, "/v1/turns", {"model": STALL, "text": "hi"})
    await assert_upstream_closed(upstream, edge.service, left_at + 0.05)
