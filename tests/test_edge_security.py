"""API keys and origins at the edge: refused without them, accepted with them, on every route."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.edge_fixtures import RunningEdge, StartEdge

TURN = {"text": "Hi", "model": "fixture/text_only"}
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def locked(start_edge: StartEdge, tmp_path: Path) -> RunningEdge:
    keys = tmp_path / "keys"
    keys.write_text("# rotated weekly\nfile-key\n\n")
    return await start_edge(api_keys="env-key, other-key", api_keys_file=str(keys), auth_timeout_seconds=0.3)


async def test_sse_needs_a_bearer_key(locked: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=locked.base_url) as client:
        missing = await client.post("/v1/turns", json=TURN)
        wrong = await client.post("/v1/turns", json=TURN, headers={"Authorization": "Bearer nope"})
        resume = await client.get("/v1/turns/turn_x/events")
        from_env = await client.post("/v1/turns", json=TURN, headers={"Authorization": "Bearer other-key"})
        from_file = await client.post("/v1/turns", json=TURN, headers={"Authorization": "Bearer file-key"})
        health = await client.get("/healthz")
    assert missing.status_code == wrong.status_code == resume.status_code == 401
    assert missing.json() == {"error": {"code": "unauthenticated", "message": "missing or invalid API key"}}
    assert from_env.status_code == from_file.status_code == 200
    assert health.status_code == 200, "probes need no key"


async def test_compat_takes_the_sdk_api_key(locked: RunningEdge) -> None:
    refused = openai.AsyncOpenAI(base_url=f"{locked.base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await refused.chat.completions.create(model="fixture/text_only", messages=QUESTION)
    accepted = openai.AsyncOpenAI(base_url=f"{locked.base_url}/v1", api_key="env-key", max_retries=0)
    answer = await accepted.chat.completions.create(model="fixture/text_only", messages=QUESTION)
    assert answer.choices[0].message.content
    await refused.close()
    await accepted.close()


async def _conversation_starts(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
    assert json.loads(await ws.recv())["type"] == "conversation.started"


async def test_websocket_key_as_subprotocol_or_first_message(locked: RunningEdge) -> None:
    offered = [Subprotocol("audiochat.v1"), Subprotocol("audiochat.bearer.env-key")]
    async with connect(locked.ws_url, subprotocols=offered) as ws:
        assert ws.subprotocol == "audiochat.v1", "the key is never echoed back"
        await _conversation_starts(ws)
    async with connect(locked.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "file-key"}))
        await _conversation_starts(ws)
    bad = [Subprotocol("audiochat.v1"), Subprotocol("audiochat.bearer.nope")]
    with pytest.raises(InvalidStatus) as refused:
        await connect(locked.ws_url, subprotocols=bad)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "first", [json.dumps({"type": "config"}), json.dumps({"type": "auth", "token": "x"}), None]
)
async def test_websocket_without_a_valid_key_is_closed_1008(locked: RunningEdge, first: str | None) -> None:
    async with connect(locked.ws_url) as ws:
        if first is not None:
            await ws.send(first)
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "unauthenticated"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_websocket_origin_is_checked_before_the_handshake(start_edge: StartEdge) -> None:
    edge = await start_edge(allowed_origins="https://app.example")
    with pytest.raises(InvalidStatus) as refused:
        await connect(edge.ws_url, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    for origin in (Origin("https://app.example"), None):
        async with connect(edge.ws_url, origin=origin) as ws:
            await _conversation_starts(ws)


async def test_default_origins_are_same_host_only(edge: RunningEdge) -> None:
    with pytest.raises(InvalidStatus):
        await connect(edge.ws_url, origin=Origin("https://evil.example"))
    async with connect(edge.ws_url, origin=Origin(edge.base_url)) as ws:
        await _conversation_starts(ws)


async def test_cors_follows_the_allowed_origins(start_edge: StartEdge) -> None:
    edge = await start_edge(allowed_origins="https://app.example")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        allowed = await client.options("/v1/turns", headers={"Origin": "https://app.example", **preflight})
        foreign = await client.options("/v1/turns", headers={"Origin": "https://evil.example", **preflight})
        post = await client.post("/v1/turns", json=TURN, headers={"Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    assert post.status_code == 200 and post.headers["access-control-allow-origin"] == "https://app.example"
