"""Tool calls through every edge: the OpenAI-compatible route with the real openai SDK (streamed, not
streamed, the `.stream()` helper) and back with results, SSE with a real SSE client, the WebSocket."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import httpx
import httpx_sse
import openai
import pytest
from websockets.asyncio.client import connect

from tests.edge_fixtures import RunningEdge, sdk_audio
from tests.events import FIXTURES, expected
from tests.test_edge_websocket import closed_with, open_conversation, read_turn
from tests.upstream_server import FixtureUpstream

QUESTION = "What's the weather in Paris?"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}, "step": 0.5},
    "required": ["city"],
    "x-vendor": [1, 2.5, None],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now.",
            "parameters": SCHEMA,
            "strict": False,
        },
    },
    {"type": "function", "function": {"name": "get_local_time", "parameters": {"type": "object"}}},
]
CAPTURES = ["tool_call", "tool_calls_after_speech"]


def plain(call: Any) -> dict[str, Any]:
    """An SDK tool call object as the wire's fields (helpers add their own, like parsed_arguments)."""
    function = {"name": call.function.name, "arguments": call.function.arguments}
    return {"id": call.id, "type": call.type, "function": function}


def sdk(edge: RunningEdge) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-anything", max_retries=0)


def openai_calls(name: str) -> list[dict[str, Any]]:
    """The capture's calls in Chat Completions' message shape."""
    return [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in expected(name)["tool_calls"]
    ]


@pytest.mark.parametrize("name", CAPTURES)
async def test_compat_streams_tool_call_deltas_in_the_upstream_shape(
    edge: RunningEdge, upstream: FixtureUpstream, name: str
) -> None:
    client = sdk(edge)
    stream = await client.chat.completions.create(
        model=f"fixture/{name}",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": QUESTION}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=True,
        stream=True,
    )
    calls: dict[int, dict[str, Any]] = {}
    transcript, pcm, finish = "", bytearray(), []
    async for chunk in stream:
        for choice in chunk.choices:
            audio = sdk_audio(choice.delta)
            transcript += audio.get("transcript") or ""
            pcm += base64.b64decode(audio.get("data") or "")
            for piece in choice.delta.tool_calls or []:
                # As SDK users fold them: the first piece opens the call, the rest append arguments.
                if piece.id:
                    assert piece.index not in calls and piece.type == "function"
                    assert piece.function is not None and piece.function.arguments == ""
                    calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
                else:
                    assert piece.function is not None and piece.function.name is None
                    calls[piece.index]["arguments"] += piece.function.arguments or ""
            finish += [choice.finish_reason] if choice.finish_reason else []
    await client.close()
    want = expected(name)
    assert [calls[i] for i in sorted(calls)] == want["tool_calls"]
    assert transcript == want["text"]
    assert hashlib.sha256(pcm).hexdigest() == want["audio_sha256"]
    assert finish == ["tool_calls"]
    sent = upstream.requests[-1]
    assert sent["tools"] == TOOLS
    assert json.dumps(sent["tools"][0]["function"]["parameters"]) == json.dumps(SCHEMA)  # key order kept
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", True)


@pytest.mark.parametrize(
    "choice", ["none", "auto", {"type": "function", "function": {"name": "get_local_time"}}]
)
async def test_compat_non_streamed_answer_carries_message_tool_calls(
    edge: RunningEdge, upstream: FixtureUpstream, choice: Any
) -> None:
    client = sdk(edge)
    completion = await client.chat.completions.create(
        model="fixture/tool_call",
        messages=[{"role": "user", "content": QUESTION}],
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
    )
    await client.close()
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None and message.audio is None
    assert [plain(call) for call in message.tool_calls or []] == openai_calls("tool_call")
    assert upstream.requests[-1]["tool_choice"] == choice
    assert upstream.requests[-1]["parallel_tool_calls"] is False


async def test_compat_spoken_preamble_and_calls_not_streamed(edge: RunningEdge) -> None:
    client = sdk(edge)
    completion = await client.chat.completions.create(
        model="fixture/tool_calls_after_speech",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": QUESTION}],
        tools=TOOLS,
    )
    await client.close()
    message = completion.choices[0].message
    want = expected("tool_calls_after_speech")
    assert message.audio is not None and message.audio.transcript == want["text"]
    assert hashlib.sha256(base64.b64decode(message.audio.data)).hexdigest() == want["audio_sha256"]
    assert [plain(call) for call in message.tool_calls or []] == openai_calls("tool_calls_after_speech")


async def test_compat_stream_helper_gives_the_final_tool_calls(edge: RunningEdge) -> None:
    client = sdk(edge)
    done_arguments: list[str] = []
    async with client.chat.completions.stream(
        model="fixture/tool_call",
        messages=[{"role": "user", "content": QUESTION}],
        tools=TOOLS,
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done_arguments.append(event.arguments)
        final = await stream.get_final_completion()
    await client.close()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content is None, "an answer that only calls has no content, as upstream"
    assert [plain(call) for call in message.tool_calls or []] == openai_calls("tool_call")
    assert done_arguments == [expected("tool_call")["tool_calls"][0]["arguments"]]


async def test_compat_round_trip_with_tool_results(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    client = sdk(edge)
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    first = await client.chat.completions.create(
        model="toolcall/audio_no_finish_reason", messages=messages, tools=TOOLS
    )
    calling = first.choices[0].message
    messages.append(calling.model_dump(exclude_none=True))
    for call in calling.tool_calls or []:
        messages.append(
            {"role": "tool", "tool_call_id": call.id, "content": [{"type": "text", "text": "21 C"}]}
        )
    stream = await client.chat.completions.create(
        model="toolcall/audio_no_finish_reason",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=messages,
        tools=TOOLS,
        stream=True,
    )
    transcript = ""
    async for chunk in stream:
        for choice in chunk.choices:
            transcript += sdk_audio(choice.delta).get("transcript") or ""
    await client.close()
    assert transcript == expected("audio_no_finish_reason")["text"]
    assert upstream.requests[-1]["messages"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": openai_calls("tool_call")},
        {"role": "tool", "tool_call_id": openai_calls("tool_call")[0]["id"], "content": "21 C"},
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "always"}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls[0].function",
        ),
    ],
)
async def test_compat_malformed_tool_fields_are_named(
    edge: RunningEdge, upstream: FixtureUpstream, change: dict[str, Any], param: str
) -> None:
    body = {"model": "fixture/tool_call", "messages": [{"role": "user", "content": QUESTION}], "tools": TOOLS}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/chat/completions", json={**body, **change})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert upstream.requests == []


async def test_compat_refuses_a_result_for_an_unknown_call(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    client = sdk(edge)
    messages: list[Any] = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "tool_calls": openai_calls("tool_call")},
        {"role": "tool", "tool_call_id": "call_other", "content": "21"},
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="fixture/text_only", messages=messages)
    await client.close()
    assert "unknown tool_call_id 'call_other'" in raised.value.message
    assert upstream.requests == []


def sse_events(raw: list[httpx_sse.ServerSentEvent]) -> list[tuple[str, dict[str, Any]]]:
    # httpx_sse reports a heartbeat comment as an empty "message" (EventSource skips it): skip it too.
    return [(event.event, json.loads(event.data)) for event in raw if event.data]


async def post_turn(client: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    async with client.stream("POST", "/v1/turns", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return sse_events([event async for event in httpx_sse.EventSource(response).aiter_sse()])


@pytest.mark.parametrize("name", CAPTURES)
async def test_sse_tool_call_events_then_continuation(
    edge: RunningEdge, upstream: FixtureUpstream, name: str
) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        events = await post_turn(client, {"text": QUESTION, "model": f"fixture/{name}", "tools": TOOLS})
        calls: dict[int, dict[str, Any]] = {}
        for kind, body in events:
            if kind == "tool_call.delta":
                call = calls.setdefault(body["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = body.get("id", call["id"])
                call["name"] = body.get("name", call["name"])
                call["arguments"] += body["arguments"]
        assert [calls[i] for i in sorted(calls)] == expected(name)["tool_calls"]
        kind, completed = events[-1]
        assert kind == "turn.completed" and completed["reason"] == "tool_calls"
        assert completed["tool_calls"] == openai_calls(name)
        # The continuation: the history ends with the results, and there is no new text.
        history = [
            {"role": "user", "text": QUESTION},
            {"role": "assistant", "text": completed["transcript"], "tool_calls": completed["tool_calls"]},
            *({"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in completed["tool_calls"]),
        ]
        after = await post_turn(client, {"model": "fixture/audio_no_finish_reason", "history": history})
    assert after[-1][1]["reason"] == "stop"
    assert (
        "".join(b["text"] for k, b in after if k == "text.delta")
        == expected("audio_no_finish_reason")["text"]
    )
    messages = upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", *["tool"] * len(completed["tool_calls"])]
    assert messages[1]["tool_calls"] == openai_calls(name)


async def test_sse_malformed_tool_fields_are_named(edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        bad_tools = await client.post("/v1/turns", json={"text": "hi", "tools": [{"type": "function"}]})
        bad_history = await client.post(
            "/v1/turns", json={"history": [{"role": "tool", "content": "x"}], "text": "hi"}
        )
    assert bad_tools.status_code == 400 and "tools[0].function" in bad_tools.text
    assert bad_history.status_code == 400 and "history[0].tool_call_id" in bad_history.text


async def test_websocket_tool_call_result_and_spoken_continuation(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "config", "model": "toolcall/audio_no_finish_reason", "tools": TOOLS})
        )
        assert json.loads(await ws.recv())["type"] == "conversation.started"
        await ws.send(json.dumps({"type": "text", "text": QUESTION}))
        first = [json.loads(await ws.recv())]
        while first[-1]["type"] != "turn.completed":
            first.append(json.loads(await ws.recv()))
        pieces = [event for event in first if event["type"] == "tool_call.delta"]
        assert pieces[0]["id"] == expected("tool_call")["tool_calls"][0]["id"]
        assert "".join(p["arguments"] for p in pieces) == expected("tool_call")["tool_calls"][0]["arguments"]
        assert first[-1]["reason"] == "tool_calls" and first[-1]["tool_calls"] == openai_calls("tool_call")
        await ws.send(json.dumps({"type": "tool_result", "tool_call_id": pieces[0]["id"], "content": "21 C"}))
        audio, second = bytearray(), list[dict[str, Any]]()
        while not second or second[-1]["type"] != "turn.completed":
            frame = await ws.recv()
            if isinstance(frame, bytes):
                audio += frame[16:]
            else:
                second.append(json.loads(frame))
        assert second[0]["type"] == "turn.started" and second[0]["turn_index"] == 2
        assert hashlib.sha256(audio).hexdigest() == expected("audio_no_finish_reason")["audio_sha256"]
        assert upstream.requests[-1]["messages"][-1] == {
            "role": "tool",
            "tool_call_id": pieces[0]["id"],
            "content": "21 C",
        }
        # A result nobody waits for is refused by name, and closes like any message in the wrong state.
        await ws.send(
            json.dumps({"type": "tool_result", "tool_call_id": pieces[0]["id"], "content": "again"})
        )
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "no tool call is waiting" in error["message"]


@pytest.mark.parametrize("name", CAPTURES)
async def test_websocket_relays_each_tool_capture_exactly(edge: RunningEdge, name: str) -> None:
    ws = await open_conversation(edge, f"fixture/{name}", tools=TOOLS)
    await ws.send(json.dumps({"type": "text", "text": QUESTION}))
    turn = await read_turn(ws)
    calls: dict[int, dict[str, Any]] = {}
    for event in turn.events:
        if event["type"] == "tool_call.delta":
            call = calls.setdefault(event["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = event.get("id", call["id"])
            call["name"] = event.get("name", call["name"])
            call["arguments"] += event["arguments"]
    want = expected(name)
    assert [calls[i] for i in sorted(calls)] == want["tool_calls"]
    assert turn.text == want["text"] and hashlib.sha256(turn.audio).hexdigest() == want["audio_sha256"]
    assert turn.completed["reason"] == "tool_calls" and turn.completed["tool_calls"] == openai_calls(name)
    await ws.close()


@pytest.mark.parametrize(
    ("answers", "code", "message"),
    [
        (["call_unknown"], 1007, "unknown tool_call_id 'call_unknown'"),
        (["call_R7tQm2XcLp9WkZ3vYh8NbDs1"] * 2, 1007, "already has its result"),
        ([], 1008, "no tool call is waiting"),
    ],
)
async def test_websocket_tool_result_mistakes_close_with_their_code(
    edge: RunningEdge, answers: list[str], code: int, message: str
) -> None:
    ws = await open_conversation(edge, "fixture/tool_calls_after_speech" if answers else "fixture/text_only")
    await ws.send(json.dumps({"type": "text", "text": QUESTION}))
    await read_turn(ws)
    for tool_call_id in answers or ["call_any"]:
        await ws.send(json.dumps({"type": "tool_result", "tool_call_id": tool_call_id, "content": "x"}))
    received, error = await closed_with(ws)
    assert received == code
    assert error is not None and message in error["message"]


async def test_compat_answer_that_opens_with_a_call_opens_like_the_upstream(edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        body = {
            "model": "fixture/tool_call",
            "messages": [{"role": "user", "content": QUESTION}],
            "tools": TOOLS,
        }
        response = await client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")]
    want = json.loads((FIXTURES / "tool_call.sse").read_text().split("\n")[0][6:])
    # The first chunk: role, null content and refusal, and the call's first piece, in one delta.
    assert chunks[0]["choices"][0]["delta"] == want["choices"][0]["delta"]
    assert [c["choices"][0]["delta"] for c in chunks[1:12]] == [
        json.loads(line[6:])["choices"][0]["delta"]
        for line in (FIXTURES / "tool_call.sse").read_text().split("\n")[2:24:2]
    ]
