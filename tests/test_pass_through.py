"""Every request parameter reaches the upstream as written, or is refused by name (issue 9, kind 2).

Through each transport: the OpenAI-compatible route (the real openai SDK), gRPC `TurnConfig.extra_body`,
SSE and WebSocket `extra_body`. The local upstream records each request body, raw and parsed.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService
from tests.edge_fixtures import RunningEdge
from tests.events import text_request
from tests.upstream_server import FixtureUpstream

MODEL = "fixture/audio_no_finish_reason"
TEXT_MODEL = "fixture/text_only"
AUDIO = {"voice": "alloy", "format": "pcm16"}
QUESTION = [{"role": "user", "content": "Is a golden retriever a good family dog?"}]

# Known parameters that are honest to forward (the model acts on them; what it sends back is relayed),
# and one no gateway knows, for an OpenAI-compatible upstream's own extension.
FORWARDED: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "seed": 1234567890123,
    "stop": ["\n\n", "END"],
    "store": True,
    "metadata": {"app": "kiosk", "locale": "de-DE"},
    "user": "user-42",
    "frequency_penalty": -0.25,
    "presence_penalty": 1.5,
    "logit_bias": {"50256": -100},
    "max_tokens": 300,
    "max_completion_tokens": 250,
    "response_format": {"type": "text"},
    "service_tier": "flex",
    "reasoning_effort": "low",
    "prediction": {"type": "content", "content": "Yes."},
    "safety_identifier": "hash-1",
    "prompt_cache_key": "kiosk-v1",
    "logprobs": False,
    "n": 1,
    "x_vendor_option": {"nested": [1, 2.5, "three", None, True]},
}

# Parameters the gateway cannot honour: forwarding them would make the model do something the client
# never sees (a second choice, log probabilities, legacy function calls, search annotations).
REFUSED: dict[str, Any] = {
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "web_search_options": {},
}


def _raw_value(raw: bytes, name: str) -> str:
    """The JSON text of a top-level number as the upstream received it (no re-serialisation)."""
    text = raw.decode()
    start = text.index(f'"{name}":') + len(name) + 3
    end = min(index for index in (text.find(",", start), text.find("}", start)) if index != -1)
    return text[start:end].strip()


async def test_compat_forwards_every_parameter_as_written(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        body = {"model": MODEL, "modalities": ["text", "audio"], "audio": AUDIO, "messages": QUESTION}
        response = await client.post("/v1/chat/completions", json={**body, **FORWARDED, "stream": True})
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    for name, value in FORWARDED.items():
        assert sent[name] == value, name
    assert _raw_value(upstream.raw_requests[-1], "temperature") == "0.7"


async def test_compat_forwards_through_the_sdk(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0)
    await client.chat.completions.create(
        model=TEXT_MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0.7,
        seed=7,
        stop="\n",
        metadata={"k": "v"},
        extra_body={"top_k": 40},
    )
    await client.close()
    sent = upstream.requests[-1]
    assert (sent["temperature"], sent["seed"], sent["stop"], sent["metadata"], sent["top_k"]) == (
        0.7,
        7,
        "\n",
        {"k": "v"},
        40,
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_compat_refuses_what_it_cannot_relay_by_name(
    edge: RunningEdge, upstream: FixtureUpstream, name: str
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=TEXT_MODEL,
            messages=QUESTION,  # type: ignore[arg-type]
            extra_body={name: REFUSED[name]},
        )
    await client.close()
    assert caught.value.param == name
    assert name in caught.value.message
    assert upstream.requests == [], "nothing reached the model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"stream": True, "stream_options": {"include_usage": True, "chunk_size": 3}},
            "stream_options.chunk_size",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"x": float("nan")}, "x"),
        ({"metadata": {"k": "\ud800"}}, "metadata.k"),
    ],
)
async def test_compat_refuses_bad_options_by_name(
    edge: RunningEdge, upstream: FixtureUpstream, body: dict[str, Any], param: str
) -> None:
    payload = json.dumps({"model": TEXT_MODEL, "messages": QUESTION, **body})
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post(
            "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.requests == []


async def test_grpc_extra_body_is_forwarded_as_written(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = text_request(MODEL)
    request.config.extra_body = json.dumps(
        {"seed": 7, "temperature": 0.7, "stop": ["x"], "x_vendor": {"a": 1}}
    )
    async for _ in service.stub.StreamTurn(request):
        pass
    sent = upstream.requests[-1]
    assert (sent["seed"], sent["temperature"], sent["stop"], sent["x_vendor"]) == (7, 0.7, ["x"], {"a": 1})
    assert _raw_value(upstream.raw_requests[-1], "temperature") == "0.7"


async def test_grpc_typed_temperature_reaches_the_upstream_as_the_client_wrote_it(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    for value in (0.7, 0.1, 1.3):
        request = text_request(MODEL)
        request.config.temperature = value  # a float32 on the wire
        async for _ in service.stub.StreamTurn(request):
            pass
        assert _raw_value(upstream.raw_requests[-1], "temperature") == repr(value)


@pytest.mark.parametrize(
    ("extra_body", "field"),
    [
        ('{"model": "other"}', "config.extra_body.model"),
        ('{"messages": []}', "config.extra_body.messages"),
        ('{"stream": false}', "config.extra_body.stream"),
        ('{"audio": {"format": "wav"}}', "config.extra_body.audio"),
        ('{"n": 2}', "config.extra_body.n"),
        ('{"logprobs": true}', "config.extra_body.logprobs"),
        ('{"max_tokens": 10}', "config.extra_body.max_tokens"),  # the request also sets max_output_tokens
        ("[1, 2]", "config.extra_body"),
        ('{"seed": NaN}', "config.extra_body"),
        ("{not json", "config.extra_body"),
        ('{"a":' * 100 + "1" + "}" * 100, "config.extra_body"),
        ('{"a":' + "[" * 3000 + "]" * 3000 + "}", "config.extra_body"),  # past Python's recursion limit
        ('{"seed": ' + "9" * 5000 + "}", "config.extra_body"),  # past Python's int digits limit
        ('{"user": "\\udfff"}', "config.extra_body.user"),  # a lone surrogate, escaped as JSON allows
    ],
)
async def test_grpc_extra_body_refused_by_name(
    service: RunningService, upstream: FixtureUpstream, extra_body: str, field: str
) -> None:
    request = text_request(MODEL)
    request.config.extra_body = extra_body
    request.config.max_output_tokens = 100
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamTurn(request):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert field.rpartition(".")[2] in details
    assert not any(internal in details for internal in ("recursion", "sys.", "Error")), details
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ('{"type": "object", "description": "\\udfff"}', "lone surrogate"),
        ('{"type": "object", "x": ' + "[" * 3000 + "]" * 3000 + "}", "nested deeper"),
        ('{"type": "object", "maximum": ' + "9" * 5000 + "}", "too many digits"),
        ('{"type": "object", "maximum": Infinity}', "Infinity"),
    ],
)
async def test_grpc_tool_schema_that_json_cannot_carry_is_refused_by_name(
    service: RunningService, upstream: FixtureUpstream, schema: str, why: str
) -> None:
    # The schema is parsed here and forwarded as JSON: what cannot be written back out must be refused
    # before the upstream request is built, not fail inside the SDK as INTERNAL.
    request = text_request(MODEL)
    request.config.tools.add().function.CopyFrom(pb.FunctionTool(name="f", parameters_json=schema))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in service.stub.StreamTurn(request):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "parameters_json" in details and why in details, details
    assert upstream.requests == []


async def test_sse_and_websocket_extra_body_is_forwarded(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    extra = {"seed": 11, "temperature": 0.7, "metadata": {"via": "sse"}}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", json={"text": "Hi", "model": MODEL, "extra_body": extra})
        assert response.status_code == 200
    assert {name: upstream.requests[-1][name] for name in extra} == extra
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": MODEL, "extra_body": {**extra, "seed": 12}}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "Hi"}))
        while isinstance(frame := await ws.recv(), bytes) or json.loads(frame)["type"] != "turn.completed":
            pass  # binary frames are audio
    assert {name: upstream.requests[-1][name] for name in extra} == {**extra, "seed": 12}


async def test_sse_extra_body_refused_by_name(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", json={"text": "Hi", "model": MODEL, "extra_body": {"n": 3}})
    assert response.status_code == 400
    assert "'n'" in response.json()["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"history": [{"role": "user", "text": "a", "name": "bob"}]}, "history[0].name"),
        ({"audio": {"data": "", "format": "wav", "speed": 2}}, "audio.speed"),
    ],
)
async def test_sse_refuses_a_field_it_would_drop_by_name(
    edge: RunningEdge, upstream: FixtureUpstream, body: dict[str, Any], param: str
) -> None:
    # Nothing a client sends is dropped without a word: it reaches the model or is refused by name.
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", json={"text": "Hi", "model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "extra_body" in error["message"]
    assert upstream.requests == []


async def test_websocket_refuses_a_config_field_it_would_drop_by_name(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": MODEL, "seed": 7}))
        frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and "'seed'" in frame["message"], frame
        await ws.wait_closed()
    assert ws.close_code == 1007
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}, "messages[0].name"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]}
                ]
            },
            None,  # an empty object asks for nothing: it passes
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "x": {"k": 1}}]}]},
            "messages[0].content[0].x",
        ),
        ({"audio": {**AUDIO, "speed": 2}}, "audio.speed"),
    ],
)
async def test_compat_refuses_a_nested_field_it_would_drop_by_name(
    edge: RunningEdge, upstream: FixtureUpstream, change: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, "messages": QUESTION, "modalities": ["text", "audio"], "audio": AUDIO, **change}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    if param is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.requests == []


async def test_compat_passes_defaults_and_empty_echoes(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    # null and the default values ask for nothing the gateway cannot relay; SDKs echo an earlier answer
    # with "refusal": null and "annotations": [], which carry nothing to lose.
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "refusal": None, "annotations": []},
        {"role": "user", "content": "Again"},
    ]
    defaults = {"n": None, "logprobs": None, "top_logprobs": 0, "functions": None}
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0)
    await client.chat.completions.create(model=TEXT_MODEL, messages=messages, extra_body=defaults)  # type: ignore[arg-type]
    await client.close()
    assert {name: upstream.requests[-1][name] for name in defaults} == defaults


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools: the core names config.tool_choice
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"call_{n}",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                            for n in (1, 2)
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
                ],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "messages",  # one call has no result: the core names its history
        ),
    ],
)
async def test_compat_names_the_core_refusals_in_its_own_terms(
    edge: RunningEdge, upstream: FixtureUpstream, change: dict[str, Any], param: str
) -> None:
    body = {"model": TEXT_MODEL, "messages": QUESTION, **change}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.requests == []
