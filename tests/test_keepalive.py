"""Keepalive end to end: calls quiet for longer than the ping policy window are not cut "too many pings".

The policy is shortened by settings (pings every 0.4 s, accepted every 0.2 s) so that gRPC's default
policy, one ping per 5 minutes with two strikes forgiven, would cut these calls within about 1.6 s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from audiochat.v1 import audiochat_pb2 as pb
from service import keepalive
from service.settings import from_environment
from tests.conftest import StartService
from tests.edge_fixtures import StartEdge
from tests.events import Collected, text_request
from tests.test_edge_sse import blocks, parse

POLICY: dict[str, Any] = {"keepalive_seconds": 0.4, "keepalive_min_ping_seconds": 0.2}
QUIET_SECONDS = 4.0  # ten pings: well past the three the default policy lets through


async def test_a_websocket_quiet_after_its_config_stays_open(
    start_service: StartService, start_edge: StartEdge
) -> None:
    edge = await start_edge(await start_service(**POLICY))
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"
        await asyncio.sleep(QUIET_SECONDS)
        await ws.send(json.dumps({"type": "text", "text": "Still there?"}))
        while (event := json.loads(await ws.recv()))["type"] != "turn.completed":
            pass
    assert event["reason"] == "stop"


async def test_an_sse_turn_waiting_on_a_stalled_upstream_is_not_cut(
    start_service: StartService, start_edge: StartEdge
) -> None:
    edge = await start_edge(await start_service(**POLICY), heartbeat_seconds=0.5)
    body = {"text": "Hi", "model": f"stall/{QUIET_SECONDS}/text_only"}
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        response = await client.post("/v1/turns", json=body)
    events = [parse(block) for block in blocks(response.content)]
    assert [name for name, _, _ in events if name == "error"] == [], events[-1]
    assert events[-1][0] == "turn.completed" and events[-1][2]["reason"] == "stop"


async def test_a_grpc_client_pinging_at_the_policy_rate_keeps_its_idle_conversation(
    start_service: StartService,
) -> None:
    service = await start_service(**POLICY)
    options = keepalive.channel_options(service.server.settings)
    async with grpc.aio.insecure_channel(service.target, options=options) as channel:
        stub = service.stub.__class__(channel)
        call = stub.Converse()
        await call.write(
            pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/text_only")))
        )
        assert (await call.read()).HasField("started")
        await asyncio.sleep(QUIET_SECONDS)
        await call.write(pb.ConverseRequest(text=pb.TextInput(text="Still there?")))
        collected = Collected()
        while not collected.completed:
            collected.add((await call.read()).event)
        await call.done_writing()
        assert collected.completed.reason == pb.FINISH_REASON_STOP
        # A StreamTurn on the same, long-pinged connection works too.
        turn = Collected()
        async for event in stub.StreamTurn(text_request("fixture/text_only")):
            turn.add(event)
        assert turn.completed is not None


def test_a_policy_stricter_than_the_pings_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="AUDIOCHAT_KEEPALIVE_MIN_PING_SECONDS"):
        from_environment({"AUDIOCHAT_KEEPALIVE_SECONDS": "5", "AUDIOCHAT_KEEPALIVE_MIN_PING_SECONDS": "6"})
