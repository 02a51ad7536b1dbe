"""API keys on the gRPC port, forwarded by the edge, and resumes only for the key that started the turn."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from audiochat.v1 import audiochat_pb2 as pb
from service.server import SERVICE_NAME
from tests.conftest import RunningService, StartService
from tests.edge_fixtures import StartEdge
from tests.events import Collected, text_request
from tests.test_edge_sse import blocks, parse

KEYS = "key-one, key-two"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def stream_turn(service: RunningService, metadata: Any = None) -> Collected:
    collected = Collected()
    async for event in service.stub.StreamTurn(text_request("fixture/text_only"), metadata=metadata):
        collected.add(event)
    return collected


@pytest.fixture
async def locked(start_service: StartService) -> RunningService:
    return await start_service(api_keys=KEYS)


@pytest.mark.parametrize("metadata", [None, bearer("nope"), (("authorization", "key-one"),)])
async def test_grpc_calls_without_a_valid_bearer_key_are_unauthenticated(
    locked: RunningService, metadata: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream_turn(locked, metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (refused.value.details() or "")


async def test_grpc_calls_with_a_key_are_served(locked: RunningService) -> None:
    (await stream_turn(locked, bearer("key-two"))).assert_matches("text_only")


async def test_an_eager_conversation_without_a_key_is_told_unauthenticated(locked: RunningService) -> None:
    for _ in range(10):

        async def eager() -> Any:
            yield pb.ConverseRequest(config=pb.ConverseConfig())
            yield pb.ConverseRequest(text=pb.TextInput(text="Hi"))

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in locked.stub.Converse(eager()):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_key_and_reflection_does(locked: RunningService) -> None:
    health = health_pb2_grpc.HealthStub(locked.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING, "probes cannot send metadata"
    reflection = reflection_pb2_grpc.ServerReflectionStub(locked.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest()])):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_edge_passes_each_client_key_on_to_a_locked_core(
    locked: RunningService, start_edge: StartEdge
) -> None:
    edge = await start_edge(locked)  # role all: edge and core share the keys
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        sse = await client.post(
            "/v1/turns",
            json={"text": "Hi", "model": "fixture/text_only"},
            headers={"Authorization": "Bearer key-one"},
        )
    assert sse.status_code == 200 and parse(blocks(sse.content)[-1])[0] == "turn.completed"
    sdk = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="key-two", max_retries=0)
    answer = await sdk.chat.completions.create(
        model="fixture/text_only", messages=[{"role": "user", "content": "Hi"}]
    )
    await sdk.close()
    assert answer.choices[0].message.content
    offered = [Subprotocol("audiochat.v1"), Subprotocol("audiochat.bearer.key-one")]
    async with connect(edge.ws_url, subprotocols=offered) as ws:
        await ws.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"
    async with connect(edge.ws_url, subprotocols=[Subprotocol("audiochat.v1")]) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "key-two"}))
        await ws.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"


async def test_a_turn_is_resumed_only_with_the_key_that_started_it(
    start_edge: StartEdge, start_service: StartService
) -> None:
    edge = await start_edge(await start_service(), api_keys=KEYS)
    first = bytearray()
    owner = {"Authorization": "Bearer key-one"}
    async with (
        httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client,
        client.stream(
            "POST", "/v1/turns", json={"text": "Hi", "model": "slow/audio_no_finish_reason"}, headers=owner
        ) as response,
    ):
        async for chunk in response.aiter_raw():
            first += chunk
            if len(blocks(bytes(first))) >= 3:
                break
    last_id = parse(blocks(bytes(first))[-1])[1]
    turn_id = last_id.split(":")[0]
    other = {"Authorization": "Bearer key-two", "Last-Event-ID": last_id}
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        by_get = await client.get(f"/v1/turns/{turn_id}/events", headers=other)
        by_post = await client.post("/v1/turns", json={"text": "x"}, headers=other)
        unknown = await client.get(
            "/v1/turns/turn_unknown/events", headers={"Authorization": "Bearer key-two"}
        )
        resumed = await client.get(f"/v1/turns/{turn_id}/events", headers={**owner, "Last-Event-ID": last_id})
    assert by_get.status_code == by_post.status_code == 404
    assert by_get.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert resumed.status_code == 200
    assert parse(blocks(resumed.content)[-1])[0] == "turn.completed"
