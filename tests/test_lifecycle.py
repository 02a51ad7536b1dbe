"""Health, reflection and the graceful drain of a real server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from audiochat.v1 import audiochat_pb2 as pb
from service.server import SERVICE_NAME
from tests.conftest import RunningService, StartService
from tests.events import Collected, text_request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_after_start(service: RunningService) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == SERVING


async def test_reflection_lists_the_service(service: RunningService) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(service.channel)

    async def one_request() -> reflection_pb2.ServerReflectionResponse:
        async for response in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            return response
        raise AssertionError("no reflection response")

    response = await one_request()
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_drain_reports_not_serving_and_lets_the_running_turn_finish(
    start_service: StartService,
) -> None:
    service = await start_service(drain_seconds=10.0)
    watch = health_pb2_grpc.HealthStub(service.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    )
    assert (await watch.read()).status == SERVING
    turn = service.stub.StreamTurn(text_request("slow/audio_no_finish_reason"))
    collected = Collected()
    collected.add(await turn.read())
    stopping = asyncio.create_task(service.server.stop())
    assert (await watch.read()).status == NOT_SERVING
    watch.cancel()
    # New calls are refused while the running answer goes on to its end.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in service.stub.StreamTurn(text_request("fixture/text_only")):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    while (event := await turn.read()) is not grpc.aio.EOF:
        collected.add(event)
    collected.assert_matches("audio_no_finish_reason")
    await asyncio.wait_for(stopping, timeout=10)


async def read_to_end(call: grpc.aio.StreamStreamCall[object, object]) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


async def test_new_calls_during_drain_are_unavailable(start_service: StartService) -> None:
    service = await start_service(drain_seconds=5.0)
    conversation = service.stub.Converse()
    await conversation.write(
        pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="slow/text_only")))
    )
    assert (await conversation.read()).HasField("started")
    stopping = asyncio.create_task(service.server.stop())
    # An idle conversation is ended so its client reconnects elsewhere, instead of being cut at the deadline.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_end(conversation)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (ended.value.details() or "")
    await asyncio.wait_for(stopping, timeout=10)
