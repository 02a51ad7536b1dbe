"""An upstream error reaches every client as the upstream sent it (issue 9, kind 3): type, code, param and
message unchanged (organization ids redacted); the compat route answers with the upstream's status and body;
gRPC carries it in google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo); SSE, WebSocket and the
in-band TurnError carry it too."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import openai
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from websockets.asyncio.client import connect

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService
from tests.edge_fixtures import RunningEdge
from tests.events import text_request
from tests.upstream_server import FixtureUpstream

MODEL = "fixture/audio_no_finish_reason"
QUESTION: Any = [{"role": "user", "content": "Hi"}]

UNSUPPORTED = {
    "message": "This model does not support the format you provided.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "unsupported_format",
}
# Same kind, other shapes: a null code and param, an organization id in the message, a rate limit.
NO_CODE = {
    "message": "Invalid 'seed': too large.",
    "type": "invalid_request_error",
    "param": None,
    "code": None,
}
WITH_ORG = {
    "message": "Rate limit reached for gpt-4o-audio-preview in organization org-AbC123xyz on tokens per min.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}
REDACTED_ORG = WITH_ORG["message"].replace("org-AbC123xyz", "org-[redacted]")  # type: ignore[union-attr]


def script(upstream: FixtureUpstream, status: int, error: dict[str, Any], **headers: str) -> None:
    upstream.error_next.append((status, {"error": error}, headers))


@pytest.mark.parametrize(("status", "error"), [(400, UNSUPPORTED), (400, NO_CODE), (404, NO_CODE)])
async def test_compat_answers_with_the_upstreams_status_and_body(
    edge: RunningEdge, upstream: FixtureUpstream, status: int, error: dict[str, Any]
) -> None:
    for stream in (False, True):
        script(upstream, status, error)
        async with httpx.AsyncClient(base_url=edge.base_url) as client:
            response = await client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "stream": stream}
            )
        assert response.status_code == status
        assert response.json() == {"error": error}


async def test_compat_sdk_sees_no_prefix_and_no_org_id(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    script(upstream, 429, WITH_ORG, **{"retry-after-ms": "1500"})
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=QUESTION)
    await client.close()
    assert caught.value.body == {**WITH_ORG, "message": REDACTED_ORG}
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "tokens"
    assert caught.value.response.headers["retry-after-ms"] == "1500"


async def test_grpc_status_carries_rich_details(service: RunningService, upstream: FixtureUpstream) -> None:
    script(upstream, 400, UNSUPPORTED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamTurn(text_request(MODEL)):
            pass
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == UNSUPPORTED["message"]
    status = rpc_status.from_call(error)
    assert status is not None
    details = {detail.TypeName(): detail for detail in status.details}
    info = error_details_pb2.ErrorInfo()
    details["google.rpc.ErrorInfo"].Unpack(info)
    assert info.reason == "unsupported_format"
    assert dict(info.metadata) == {
        "http_status": "400",
        "type": "invalid_request_error",
        "code": "unsupported_format",
    }
    bad = error_details_pb2.BadRequest()
    details["google.rpc.BadRequest"].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("messages", UNSUPPORTED["message"])]


async def test_grpc_rate_limit_carries_retry_info_and_redacts(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    script(upstream, 429, WITH_ORG, **{"retry-after-ms": "1500"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamTurn(text_request(MODEL)):
            pass
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == REDACTED_ORG
    status = rpc_status.from_call(caught.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    next(d for d in status.details if d.Is(retry.DESCRIPTOR)).Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 1500
    assert "BadRequest" not in str([d.TypeName() for d in status.details]), "no param, no field violation"


async def test_grpc_own_validation_names_the_field(service: RunningService) -> None:
    request = text_request(MODEL)
    request.config.extra_body = '{"n": 2}'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamTurn(request):
            pass
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    assert bad.field_violations[0].field == "config.extra_body.n"


async def test_converse_turn_error_carries_the_upstream_error(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    script(upstream, 400, UNSUPPORTED)
    call = service.stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=MODEL))))
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="Hi")))
    completed = None
    async for response in call:
        if response.HasField("event") and response.event.HasField("completed"):
            completed = response.event.completed
            break
    call.cancel()
    assert completed is not None and completed.reason == pb.FINISH_REASON_ERROR
    upstream_error = completed.error.upstream
    assert (upstream_error.http_status, upstream_error.type, upstream_error.code, upstream_error.param) == (
        400,
        "invalid_request_error",
        "unsupported_format",
        "messages",
    )
    assert completed.error.message == UNSUPPORTED["message"]


async def test_sse_and_websocket_errors_carry_the_upstream_error(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    script(upstream, 400, UNSUPPORTED)
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", json={"text": "Hi", "model": MODEL})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == UNSUPPORTED["message"] and error["param"] == "messages"
    assert error["upstream"] == {"http_status": 400, **{k: UNSUPPORTED[k] for k in ("type", "code", "param")}}
    script(upstream, 400, UNSUPPORTED)
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": MODEL}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "Hi"}))
        while isinstance(frame := await ws.recv(), bytes) or json.loads(frame)["type"] != "turn.completed":
            pass
    done = json.loads(frame)
    assert done["reason"] == "error"
    assert done["error"]["message"] == UNSUPPORTED["message"]
    assert done["error"]["upstream"] == {
        "http_status": 400,
        **{k: UNSUPPORTED[k] for k in ("type", "code", "param")},
    }
