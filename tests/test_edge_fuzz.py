"""Hostile input on every edge message kind is a 4xx or a close 1007/1008/1009, never a 500, a 1006 or a 1011,
and the edge keeps serving (issue 10 item 7). Bounded examples here; `make fuzz` runs many more
(AUDIOCHAT_FUZZ_EXAMPLES)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.edge_fixtures import RunningEdge

EXAMPLES = int(os.environ.get("AUDIOCHAT_FUZZ_EXAMPLES", "15"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODEL = "fixture/text_only"

# The hostile values the issue names, beside whatever hypothesis makes up.
NASTY: list[Any] = [
    "\ud800",
    "é" * 3,
    -1,
    0,
    2**40,
    10**30,
    1e300,
    -1e300,
    float("nan"),
    float("inf"),
    [{}],
    {"encoding": {}},
    "[" * 200,
    "",
    True,
    None,
    "AAA",
    "éé==",
]
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(NASTY)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

TURN_FIELDS = [
    "text", "audio", "model", "voice", "instructions", "modalities", "max_output_tokens", "temperature",
    "history", "extra_body",
]  # fmt: skip
AUDIO_FIELDS = ["data", "format", "sample_rate_hz"]
WS_KINDS = ["config", "text", "commit", "interrupt", "audio.start", "clear_audio", "auth", "bogus"]
COMPAT_FIELDS = [
    "model", "messages", "stream", "modalities", "audio", "max_tokens", "max_completion_tokens",
    "temperature", "stream_options", "n", "seed", "extra",
]  # fmt: skip


def dumps(value: Any) -> bytes:
    return json.dumps(
        value, allow_nan=True
    ).encode()  # NaN and lone surrogates go out as a hostile client sends them


def fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(names), JSON, max_size=4)


async def still_serves(edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        response = await client.post("/v1/turns", json={"text": "Hi", "model": MODEL})
    assert response.status_code == 200 and b"turn.completed" in response.content


async def post(
    edge: RunningEdge, path: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        return await client.post(
            path, content=body, headers={"content-type": "application/json", **(headers or {})}
        )


def assert_no_server_fault(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert b'"code":"internal"' not in response.content


@FUZZ
@given(body=fields(TURN_FIELDS), audio=fields(AUDIO_FIELDS), history=st.lists(fields(["role", *TURN_FIELDS])))
async def test_sse_turn_body(
    edge: RunningEdge, body: dict[str, Any], audio: dict[str, Any], history: Any
) -> None:
    body = {"model": MODEL, **body}
    if audio:
        body["audio"] = audio
    if history:
        body["history"] = history
    assert_no_server_fault(await post(edge, "/v1/turns", dumps(body)))


@FUZZ
@given(body=JSON | st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")))
async def test_sse_whole_body(edge: RunningEdge, body: Any) -> None:
    assert_no_server_fault(await post(edge, "/v1/turns", dumps(body)))


@FUZZ
@given(last_event_id=st.text(alphabet="0123456789:turn_abc-", max_size=6000))
async def test_sse_last_event_id(edge: RunningEdge, last_event_id: str) -> None:
    headers = {"last-event-id": last_event_id}
    assert_no_server_fault(await post(edge, "/v1/turns", dumps({"text": "Hi", "model": MODEL}), headers))
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=30) as client:
        response = await client.get("/v1/turns/turn_x/events", headers=headers)
    assert_no_server_fault(response)


@FUZZ
@given(body=fields(COMPAT_FIELDS), message=fields(["role", "content", "audio", "name"]))
async def test_compat_body(edge: RunningEdge, body: dict[str, Any], message: dict[str, Any]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi", **message}], **body}
    assert_no_server_fault(await post(edge, "/v1/chat/completions", dumps(body)))


async def close_code_or_answer(ws: ClientConnection) -> int | None:
    """None when a turn completed; else the close code the server sent (1006 if it sent none)."""
    try:
        while isinstance(frame := await ws.recv(), bytes) or json.loads(frame)["type"] != "turn.completed":
            pass
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else 1006
    return None


@FUZZ
@given(kind=st.sampled_from(WS_KINDS), body=fields([*TURN_FIELDS, "input_audio", "played_ms", "encoding"]))
async def test_websocket_message(edge: RunningEdge, kind: str, body: dict[str, Any]) -> None:
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        if kind != "config":
            await ws.send(json.dumps({"type": "config", "model": MODEL}))
        await ws.send(dumps({**body, "type": kind}).decode())
        await ws.send(json.dumps({"type": "text", "text": "Hi"}))
        assert await close_code_or_answer(ws) in (None, 1000, 1007, 1008, 1009)


@pytest.mark.parametrize("frame", ["[" * 5000 + "]" * 5000, '{"type": "text", "text": NaN}', "{}" * 3, "[]"])
async def test_websocket_raw_frames(edge: RunningEdge, frame: str) -> None:
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(frame)
        assert await close_code_or_answer(ws) == 1007
    await still_serves(edge)


async def test_edge_still_serves_after_hostile_bodies(edge: RunningEdge) -> None:
    for body in (
        b"[" * 100_000,
        b'{"text": "\\ud800"}',
        b'{"max_output_tokens": 1099511627776}',
        b"1" * 5000,
    ):
        response = await post(edge, "/v1/turns", body)
        assert response.status_code == 400, response.text
        assert "param" in response.json()["error"] or "JSON" in response.json()["error"]["message"]
    await still_serves(edge)
