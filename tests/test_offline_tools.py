"""Tool calling with the offline voice (what `make run` answers with when no key is set): it calls a tool
the user names or that tool_choice requires, with arguments from the user's words, then reads the result."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio

from audiochat.v1 import audiochat_pb2 as pb
from service.offline.server import OfflineVoiceServer
from service.offline.tools import fill_arguments
from tests.conftest import StartService
from tests.edge_fixtures import sdk_audio
from tests.events import Collected

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "detailed": {"type": "boolean"},
            },
            "required": ["city", "unit"],
        },
    },
}
CLOCK: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object"}},
}
SPOKEN: dict[str, Any] = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}


@pytest.mark.parametrize(
    ("words", "want"),
    [
        ("in fahrenheit please, for Lisbon", {"city": "Lisbon", "unit": "fahrenheit"}),
        ("What is it like in São Paulo?", {"city": "São Paulo", "unit": "celsius"}),
        ("Oslo", {"city": "Oslo", "unit": "celsius"}),
    ],
)
def test_required_arguments_come_from_the_users_words(words: str, want: dict[str, Any]) -> None:
    assert fill_arguments(WEATHER["function"]["parameters"], words) == want


def test_numbers_booleans_and_missing_schemas() -> None:
    schema = {
        "properties": {
            "days": {"type": "integer", "minimum": 1},
            "x": {"type": "number"},
            "b": {"type": "boolean"},
        },
        "required": ["days", "x", "b"],
    }
    assert fill_arguments(schema, "for 3 days, yes") == {"days": 3, "x": 3.0, "b": True}
    assert fill_arguments(schema, "soon") == {"days": 1, "x": 0.0, "b": False}
    assert fill_arguments(None, "anything") == {}


@pytest_asyncio.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    async with OfflineVoiceServer() as voice:
        client = openai.AsyncOpenAI(base_url=voice.base_url, api_key="offline", max_retries=0)
        yield client
        await client.close()


async def streamed(sdk: openai.AsyncOpenAI, messages: list[Any], **extra: Any) -> dict[str, Any]:
    stream = await sdk.chat.completions.create(
        model="gpt-4o-audio-preview", messages=messages, stream=True, **SPOKEN, **extra
    )
    calls: dict[int, dict[str, str]] = {}
    transcript, pcm, finish = "", bytearray(), None
    async for chunk in stream:
        for choice in chunk.choices:
            audio = sdk_audio(choice.delta)
            transcript += audio.get("transcript") or ""
            pcm += base64.b64decode(audio.get("data") or "")
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                assert piece.function is not None
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return {
        "calls": [calls[i] for i in sorted(calls)],
        "transcript": transcript,
        "pcm": bytes(pcm),
        "finish": finish,
    }


async def test_calls_the_tool_the_user_names_after_saying_so(sdk: openai.AsyncOpenAI) -> None:
    said = await streamed(
        sdk,
        [{"role": "user", "content": "Use get weather for Paris, in fahrenheit."}],
        tools=[CLOCK, WEATHER],
    )
    assert said["finish"] == "tool_calls"
    assert said["transcript"] == "Let me call get_weather."
    assert len(said["pcm"]) > 24_000, "the preamble is spoken"
    (call,) = said["calls"]
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "fahrenheit"}


@pytest.mark.parametrize(
    ("text", "choice", "want"),
    [
        ("Tell me a joke.", "required", "get_time"),
        ("Tell me a joke.", {"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
        ("What does get_weather say?", "none", None),
        ("Tell me a joke.", "auto", None),
        ("Tell me a joke.", None, None),
    ],
)
async def test_tool_choice_decides_when_the_user_does_not(
    sdk: openai.AsyncOpenAI, text: str, choice: Any, want: str | None
) -> None:
    extra: dict[str, Any] = {"tools": [CLOCK, WEATHER]}
    if choice is not None:
        extra["tool_choice"] = choice
    said = await streamed(sdk, [{"role": "user", "content": text}], **extra)
    assert [call["name"] for call in said["calls"]] == ([want] if want else [])
    assert said["finish"] == ("tool_calls" if want else None)


async def test_reads_the_tool_result_in_the_continuation(sdk: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "get_weather in Rome"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
    ]
    said = await streamed(sdk, messages, tools=[WEATHER])
    assert said["calls"] == [] and said["transcript"] == "get_weather returned: Sunny, 24 degrees."
    assert len(said["pcm"]) > 24_000


async def test_non_streamed_call(sdk: openai.AsyncOpenAI) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "get_time please"}],
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "tools": [CLOCK],
    }
    completion = await sdk.chat.completions.create(model="gpt-4o-audio-preview", **request)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [("get_time", "{}")]


async def test_bad_tools_are_refused_like_openai(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function"}],  # type: ignore[list-item]
            **SPOKEN,
        )
    assert raised.value.body is not None and "tools[0]" in str(raised.value.body)


async def test_converse_round_trip_through_the_service_on_the_offline_voice(
    start_service: StartService,
) -> None:
    tool = pb.Tool(
        function=pb.FunctionTool(
            name="get_weather", parameters_json=json.dumps(WEATHER["function"]["parameters"])
        )
    )
    async with OfflineVoiceServer() as voice:
        service = await start_service(base_url=voice.base_url)
        call = service.stub.Converse()
        await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(tools=[tool]))))
        assert (await call.read()).HasField("started")
        await call.write(pb.ConverseRequest(text=pb.TextInput(text="What does get_weather say for Oslo?")))
        first = Collected()
        while first.completed is None:
            first.add((await call.read()).event)
        assert first.completed.reason == pb.FINISH_REASON_TOOL_CALLS
        assert first.text == "Let me call get_weather." and len(first.audio) > 24_000
        (tool_call,) = first.completed.tool_calls
        assert json.loads(tool_call.arguments) == {"city": "Oslo", "unit": "celsius"}
        result = pb.ToolResult(tool_call_id=tool_call.id, content="Snow, minus 3")
        await call.write(pb.ConverseRequest(tool_result=result))
        second = Collected()
        while second.completed is None:
            second.add((await call.read()).event)
        assert second.completed.reason == pb.FINISH_REASON_STOP
        assert second.text == "get_weather returned: Snow, minus 3."
        assert len(second.audio) > 24_000, "the result is spoken"
        await call.done_writing()
