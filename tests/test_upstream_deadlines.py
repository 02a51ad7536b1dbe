"""Deadlines on the upstream: connect, first byte and idle gaps apart; no silent retries past the wait cap.

The fault upstream never sends headers, stalls mid-answer, or answers 429 with a long retry-after; every
transport's client hears about it within the configured deadline instead of minutes later.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import StartService
from tests.edge_fixtures import StartEdge
from tests.events import Collected, text_request
from tests.fault_upstream import FaultUpstream
from tests.test_backpressure_cancel import backpressured

STALL = "silent/14/audio_no_finish_reason"  # transcript and some audio, then silence
PAST_BUFFERS = "long/600"  # 38 MB as upstream SSE: well over the loopback buffers between upstream and client


async def collect(call: Any) -> Collected:
    collected = Collected()
    async for event in call:
        collected.add(event)
    return collected


async def test_no_response_headers_is_deadline_exceeded_without_retries(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(upstream_max_retries=2, upstream_timeout_seconds=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service.stub.StreamTurn(text_request("hang")))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.5 s" in (raised.value.details() or "")
    assert len(upstream.requests) == 1, "a timeout is not retried: each retry would cost the deadline again"
    async with asyncio.timeout(2):
        await upstream.idle()


async def test_a_stall_mid_answer_ends_the_turn_in_band(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(upstream_idle_timeout_seconds=1.0)
    collected = await collect(service.stub.StreamTurn(text_request(STALL)))
    done = collected.completed
    assert done is not None and done.reason == pb.FINISH_REASON_ERROR
    assert done.error.code == pb.ERROR_CODE_DEADLINE_EXCEEDED and done.error.retryable
    assert collected.audio, "what arrived before the stall was relayed"
    async with asyncio.timeout(2):
        await upstream.idle()


async def test_a_slow_reader_is_not_an_idle_upstream(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    # The idle deadline times the upstream's reads only: a pausing client back-pressures, it does not fail.
    service = await start_service(upstream_idle_timeout_seconds=1.0)
    call = service.stub.StreamTurn(text_request(PAST_BUFFERS))
    collected = Collected()
    collected.add(await call.read())
    await backpressured(upstream)  # the gateway waits on its client, not on the upstream
    await asyncio.sleep(3.0)  # three idle deadlines without reading
    while collected.completed is None:
        collected.add(await call.read())
    assert collected.completed is not None and collected.completed.reason == pb.FINISH_REASON_STOP


async def test_a_long_retry_after_goes_to_the_client_at_once(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(upstream_max_retries=2, upstream_max_wait_seconds=5.0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service.stub.StreamTurn(text_request("retry/30")))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(raised.value.trailing_metadata() or ()).get("retry-after-ms") == "30000"
    assert len(upstream.requests) == 1, "the gateway did not sleep 30 s on the client's behalf"


async def test_a_short_failure_is_retried_within_the_wait_cap(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    service = await start_service(upstream_max_retries=2, upstream_max_wait_seconds=5.0)
    upstream.fail_next = ["503/server_error"]
    collected = await collect(service.stub.StreamTurn(text_request("fixture/audio_no_finish_reason")))
    assert collected.completed is not None and collected.completed.reason == pb.FINISH_REASON_STOP
    assert len(upstream.requests) == 2


async def test_retries_stop_at_the_wait_cap(start_service: StartService, upstream: FaultUpstream) -> None:
    # 429 with retry-after-ms 1500, three times: one retry fits a 2 s cap, the second would not.
    service = await start_service(upstream_max_retries=5, upstream_max_wait_seconds=2.0)
    upstream.fail_next = ["429/rate_limit_exceeded"] * 3
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service.stub.StreamTurn(text_request("fixture/audio_no_finish_reason")))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(upstream.requests) == 2


async def test_sse_and_compat_say_429_with_the_upstream_delay(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await start_edge()
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as client:
        sse = await client.post("/v1/turns", json={"model": "retry/30", "text": "hi"})
        compat = await client.post(
            "/v1/chat/completions",
            json={"model": "retry/30", "messages": [{"role": "user", "content": "hi"}]},
        )
    for response in (sse, compat):
        assert response.status_code == 429
        assert response.headers["retry-after"] == "30"


async def test_compat_stream_sends_comments_while_the_upstream_stalls(
    start_edge: StartEdge, upstream: FaultUpstream
) -> None:
    edge = await start_edge(heartbeat_seconds=0.05)
    body = {"model": STALL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    seen = b""
    async with (
        httpx.AsyncClient(base_url=edge.base_url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        async for piece in response.aiter_raw():
            seen += piece
            if seen.count(b": keep-alive\n\n") >= 2:
                break
    assert b"[DONE]" not in seen
