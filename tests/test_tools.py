"""Tool calling through the core over real gRPC: tools forwarded as written, calls streamed and completed,
results and continuations in StreamTurn and Converse, and every misuse refused by name."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService
from tests.events import Collected, call_json, expected
from tests.upstream_server import FixtureUpstream

# Key order, integers, floats, unicode and keywords the gateway does not know must reach the model as written.
WEATHER_SCHEMA = (
    '{"type":"object","properties":{"city":{"type":"string","description":"Ville, e.g. S\\u00e3o Paulo"},'
    '"unit":{"enum":["celsius","fahrenheit"]},"days":{"type":"integer","minimum":1,"maximum":16},'
    '"threshold":{"type":"number","multipleOf":0.5}},"required":["city"],"additionalProperties":false,'
    '"x-vendor":{"nested":[1,2.5,null,true]}}'
)
QUESTION = "What's the weather in Paris?"


def weather_tool(**function: Any) -> pb.Tool:
    return pb.Tool(
        function=pb.FunctionTool(
            name="get_weather",
            description="Current weather for a city.",
            parameters_json=WEATHER_SCHEMA,
            **function,
        )
    )


def tool_request(model: str, **config: Any) -> pb.StreamTurnRequest:
    config.setdefault("tools", [weather_tool()])
    return pb.StreamTurnRequest(
        config=pb.TurnConfig(model=model, **config), input=pb.UserMessage(text=QUESTION)
    )


async def collect(service: RunningService, request: pb.StreamTurnRequest) -> Collected:
    collected = Collected()
    async for event in service.stub.StreamTurn(request):
        collected.add(event)
    return collected


@pytest.mark.parametrize(
    ("choice", "parallel", "want_choice"),
    [
        (None, None, None),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), None, "auto"),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), False, "none"),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), True, "required"),
        (
            pb.ToolChoice(function_name="get_weather"),
            False,
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
async def test_tools_reach_the_upstream_as_written(
    service: RunningService,
    upstream: FixtureUpstream,
    choice: pb.ToolChoice | None,
    parallel: bool | None,
    want_choice: Any,
) -> None:
    config: dict[str, Any] = {
        "tools": [weather_tool(strict=True), pb.Tool(function=pb.FunctionTool(name="ping"))]
    }
    if choice is not None:
        config["tool_choice"] = choice
    if parallel is not None:
        config["parallel_tool_calls"] = parallel
    collected = await collect(service, tool_request("fixture/tool_call", **config))
    collected.assert_matches("tool_call")
    sent = upstream.requests[-1]
    # Same keys in the same order, integers still integers: compare the JSON text, not only the values.
    compact = (",", ":")
    assert json.dumps(sent["tools"][0]["function"]["parameters"], separators=compact) == json.dumps(
        json.loads(WEATHER_SCHEMA), separators=compact
    )
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": json.loads(WEATHER_SCHEMA),
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "ping"}},
    ]
    assert sent.get("tool_choice") == want_choice
    assert sent.get("parallel_tool_calls") == parallel
    assert ("tool_choice" in sent) == (want_choice is not None)
    assert ("parallel_tool_calls" in sent) == (parallel is not None)


async def test_speech_then_interleaved_calls_arrive_whole_and_in_index_order(service: RunningService) -> None:
    collected = await collect(service, tool_request("fixture/tool_calls_after_speech"))
    collected.assert_matches("tool_calls_after_speech")
    kinds = [event.WhichOneof("event") for event in collected.events]
    # The spoken preamble comes first, the call pieces after it, as the model said them.
    assert kinds.index("tool_call") > max(i for i, kind in enumerate(kinds) if kind == "audio")
    assert [e.tool_call.index for e in collected.events if e.HasField("tool_call")] == [0, 0, 1, 1, 0, 1, 0]


def tool_history() -> list[pb.HistoryItem]:
    call = pb.ToolCall(id="call_Vq3mZ8tKc1XhR2pLw9Yb4NfA", name="get_weather", arguments='{"city":"Paris"}')
    return [
        pb.HistoryItem(user=pb.UserMessage(text=QUESTION)),
        pb.HistoryItem(assistant=pb.AssistantMessage(tool_calls=[call])),
        pb.HistoryItem(tool_result=pb.ToolResult(tool_call_id=call.id, content='{"temp_c":21}')),
    ]


async def test_stream_turn_continues_after_tool_results(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = pb.StreamTurnRequest(
        config=pb.TurnConfig(model="fixture/audio_no_finish_reason", tools=[weather_tool()]),
        history=tool_history(),
    )
    collected = await collect(service, request)
    collected.assert_matches("audio_no_finish_reason")
    assert upstream.requests[-1]["messages"] == [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_Vq3mZ8tKc1XhR2pLw9Yb4NfA",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_Vq3mZ8tKc1XhR2pLw9Yb4NfA", "content": '{"temp_c":21}'},
    ]


async def test_a_spoken_preamble_is_referred_to_by_audio_id_with_its_calls(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    history = tool_history()
    history[1].assistant.audio_id = "audio_abc"
    history[1].assistant.text = "Let me check."
    request = pb.StreamTurnRequest(
        config=pb.TurnConfig(model="fixture/text_only"),
        history=history,
        input=pb.UserMessage(text="And Rome?"),
    )
    await collect(service, request)
    messages = upstream.requests[-1]["messages"]
    assert messages[1]["audio"] == {"id": "audio_abc"} and len(messages[1]["tool_calls"]) == 1
    assert messages[-1] == {"role": "user", "content": "And Rome?"}


def schema_tool(parameters_json: str) -> pb.Tool:
    return pb.Tool(function=pb.FunctionTool(name="f", parameters_json=parameters_json))


def _bad_requests() -> list[tuple[str, pb.StreamTurnRequest, str]]:
    def base(**config: Any) -> pb.StreamTurnRequest:
        return tool_request("fixture/tool_call", **config)

    def history(items: list[pb.HistoryItem], text: str = "") -> pb.StreamTurnRequest:
        return pb.StreamTurnRequest(
            config=pb.TurnConfig(model="fixture/text_only"), history=items, input=pb.UserMessage(text=text)
        )

    not_json = "tools[0].function.parameters_json is not valid JSON"
    required = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)
    h = tool_history()
    return [
        ("not json", base(tools=[schema_tool("{")]), not_json),
        ("NaN", base(tools=[schema_tool('{"a":NaN}')]), not_json),
        (
            "array",
            base(tools=[schema_tool("[1]")]),
            "tools[0].function.parameters_json must be a JSON object",
        ),
        ("no function", base(tools=[weather_tool(), pb.Tool()]), "tools[1]: only function tools"),
        (
            "empty name",
            base(tools=[pb.Tool(function=pb.FunctionTool())]),
            "tools[0].function.name is required",
        ),
        ("twice", base(tools=[weather_tool(), weather_tool()]), "offered twice"),
        (
            "unknown choice",
            base(tool_choice=pb.ToolChoice(function_name="get_time")),
            "'get_time' is not one of the tools",
        ),
        ("choice without tools", base(tools=[], tool_choice=required), "tool_choice is only allowed"),
        (
            "parallel without tools",
            base(tools=[], parallel_tool_calls=True),
            "parallel_tool_calls is only allowed",
        ),
        (
            "unknown call id",
            history([*h[:2], pb.HistoryItem(tool_result=pb.ToolResult(tool_call_id="call_x"))]),
            "history[2].tool_result: unknown tool_call_id 'call_x'",
        ),
        ("duplicate result", history([*h, h[2]]), "already has its result"),
        ("result without call", history([h[0], h[2]]), "history[1].tool_result: no tool call is waiting"),
        ("missing result", history(h[:2], "next"), "history: tool calls ['call_Vq3mZ8tKc1XhR2pLw9Yb4NfA']"),
        ("user before result", history([*h[:2], h[0], h[2]]), "history[2]: tool calls"),
        (
            "call without id",
            history(
                [h[0], pb.HistoryItem(assistant=pb.AssistantMessage(tool_calls=[pb.ToolCall(name="f")]))]
            ),
            "history[1].assistant.tool_calls[0] needs an id",
        ),
        ("empty input", history(h[:1]), "empty turn"),
    ]


@pytest.mark.parametrize(
    ("case", "request_", "message"), _bad_requests(), ids=[c[0] for c in _bad_requests()]
)
async def test_tool_misuse_is_refused_by_name(
    service: RunningService,
    upstream: FixtureUpstream,
    case: str,
    request_: pb.StreamTurnRequest,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service, request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")
    assert upstream.requests == [], "nothing reaches the model"


async def open_conversation(service: RunningService, model: str) -> Any:
    call = service.stub.Converse()
    turn = pb.TurnConfig(model=model, tools=[weather_tool()])
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=turn)))
    assert (await call.read()).HasField("started")
    return call


async def ask(call: Any, text: str = QUESTION) -> Collected:
    await call.write(pb.ConverseRequest(text=pb.TextInput(text=text)))
    return await read_turn(call)


async def read_turn(call: Any) -> Collected:
    collected = Collected()
    while collected.completed is None:
        collected.add((await call.read()).event)
    return collected


async def read_until_the_end(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


def result(tool_call_id: str, content: str = '{"temp_c":21}') -> pb.ConverseRequest:
    return pb.ConverseRequest(tool_result=pb.ToolResult(tool_call_id=tool_call_id, content=content))


async def test_converse_call_result_then_spoken_continuation(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "toolcall/audio_no_finish_reason")
    first = await ask(call)
    first.assert_matches("tool_call")
    assert first.completed is not None
    (tool_call,) = first.completed.tool_calls
    await call.write(result(tool_call.id))
    # The service continues by itself: a new turn, streamed like any other.
    second = await read_turn(call)
    second.assert_matches("audio_no_finish_reason")
    assert second.events[0].turn_id != first.events[0].turn_id
    exchange = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": tool_call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": tool_call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temp_c":21}'},
    ]
    assert upstream.requests[-1]["messages"] == exchange
    # The exchange and the spoken continuation stay in the history of the next turn.
    await ask(call, "Thanks!")
    assert upstream.requests[-1]["messages"] == [
        *exchange,
        {"role": "assistant", "content": expected("audio_no_finish_reason")["text"]},  # its audio id expired
        {"role": "user", "content": "Thanks!"},
    ]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_results_of_parallel_calls_continue_only_once_all_arrived(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "fixture/tool_calls_after_speech")
    first = await ask(call)
    assert first.completed is not None
    assert [call_json(c) for c in first.completed.tool_calls] == expected("tool_calls_after_speech")[
        "tool_calls"
    ]
    weather, clock = first.completed.tool_calls
    await call.write(result(clock.id, "14:05"))  # in any order
    await call.write(result(weather.id))
    second = await read_turn(call)
    assert second.completed is not None and second.completed.reason == pb.FINISH_REASON_TOOL_CALLS
    messages = upstream.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert (
        messages[1]["content"] == expected("tool_calls_after_speech")["text"]
    )  # the preamble, by transcript
    assert [m["tool_call_id"] for m in messages[2:]] == [clock.id, weather.id]
    assert upstream.streams_started == 2
    await call.done_writing()


@pytest.mark.parametrize(
    ("answers", "status", "message"),
    [
        (["call_unknown"], grpc.StatusCode.INVALID_ARGUMENT, "unknown tool_call_id 'call_unknown'"),
        (["call_R7tQm2XcLp9WkZ3vYh8NbDs1"] * 2, grpc.StatusCode.INVALID_ARGUMENT, "already has its result"),
    ],
)
async def test_unknown_or_duplicate_results_are_refused(
    service: RunningService, answers: list[str], status: grpc.StatusCode, message: str
) -> None:
    call = await open_conversation(service, "fixture/tool_calls_after_speech")
    await ask(call)
    for tool_call_id in answers:
        await call.write(result(tool_call_id))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == status
    assert message in (raised.value.details() or "")


async def test_interrupt_while_the_tool_runs_cancels_the_continuation(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "toolcall/audio_no_finish_reason")
    first = await ask(call)
    assert first.completed is not None
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=0)))
    await call.write(result(first.completed.tool_calls[0].id))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no tool call is waiting" in (raised.value.details() or "")
    assert upstream.streams_started == 1, "no continuation was asked for"


async def test_a_new_input_instead_of_results_drops_the_calls_but_keeps_the_speech(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    call = await open_conversation(service, "fixture/tool_calls_after_speech")
    first = await ask(call)
    assert first.completed is not None
    await call.write(result(first.completed.tool_calls[0].id))  # one of two results, then the user moves on
    await ask(call, "Never mind.")
    messages = upstream.requests[-1]["messages"]
    assert messages == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": expected("tool_calls_after_speech")["text"]},
        {"role": "user", "content": "Never mind."},
    ]
    await call.done_writing()


async def test_a_result_before_the_calls_completed_is_refused(service: RunningService) -> None:
    call = await open_conversation(service, "slow/tool_calls_after_speech")
    await call.write(pb.ConverseRequest(text=pb.TextInput(text=QUESTION)))
    while not (response := await call.read()).event.HasField("tool_call"):
        pass  # the speech before the calls
    await call.write(result(response.event.tool_call.id))  # its arguments are still being written
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_until_the_end(call)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "after the answer's TurnCompleted" in (raised.value.details() or "")
