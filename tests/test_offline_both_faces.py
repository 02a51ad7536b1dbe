"""The offline voice through either upstream API: a service on AUDIOCHAT_UPSTREAM=offline (its Chat
Completions face) and one on offline-realtime (its Realtime face, through the gateway's Realtime upstream)
give the same answers: the same text, the same audio bytes, the same tool calls and finish reasons."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import grpc
import pytest
import pytest_asyncio

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.audio import wrap_pcm16_as_wav
from service.server import AudioChatServer
from service.upstream_registry import KINDS
from tests.conftest import TEST_SETTINGS
from tests.events import Collected
from tests.speech import utterance

KINDS_COMPARED = ("offline", "offline-realtime")
SPOKEN = [pb.MODALITY_TEXT, pb.MODALITY_AUDIO]
WEATHER = pb.Tool(
    function=pb.FunctionTool(
        name="get_weather",
        parameters_json=json.dumps(
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        ),
    )
)

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stubs() -> AsyncIterator[dict[str, Any]]:
    """A service on each offline kind, opened by the registry as `audiochat serve` opens it."""
    async with AsyncExitStack() as stack:
        found: dict[str, Any] = {}
        for kind in KINDS_COMPARED:
            settings = replace(TEST_SETTINGS, upstream=kind, openai_api_key="")
            server = AudioChatServer(settings, await KINDS[kind].open(settings, stack))
            port = await server.start()
            stack.push_async_callback(server.stop)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stack.push_async_callback(channel.close)
            found[kind] = pb_grpc.AudioChatServiceStub(channel)
        yield found


async def _turn(stub: Any, request: pb.StreamTurnRequest) -> Collected:
    collected = Collected()
    async for event in stub.StreamTurn(request, timeout=30):
        collected.add(event)
    return collected


def _same(answers: dict[str, Collected]) -> Collected:
    chat, realtime = (answers[kind] for kind in KINDS_COMPARED)
    assert chat.completed is not None and realtime.completed is not None
    assert realtime.text == chat.text
    assert bytes(realtime.audio) == bytes(chat.audio)
    assert realtime.completed.reason == chat.completed.reason
    assert realtime.completed.transcript == chat.completed.transcript
    calls = [[(c.name, c.arguments) for c in answer.completed.tool_calls] for answer in (chat, realtime)]  # type: ignore[union-attr]
    assert calls[0] == calls[1]
    assert realtime.usage is not None and chat.usage is not None
    assert realtime.usage.output_audio_tokens == chat.usage.output_audio_tokens
    assert realtime.usage.output_text_tokens == chat.usage.output_text_tokens
    return chat


@module_loop
async def test_a_spoken_answer(stubs: dict[str, Any]) -> None:
    config = pb.TurnConfig(model="gpt-4o-audio-preview", modalities=SPOKEN, voice="sage")
    question = pb.UserMessage(text="Is a golden retriever a good family dog?")
    answers = {
        kind: await _turn(stubs[kind], pb.StreamTurnRequest(config=config, input=question))
        for kind in KINDS_COMPARED
    }
    answer = _same(answers)
    assert answer.completed is not None and answer.completed.reason == pb.FINISH_REASON_STOP
    assert "golden retriever" in answer.text and len(answer.audio) > 24_000


@module_loop
async def test_a_recording_answered_in_text(stubs: dict[str, Any]) -> None:
    wav = wrap_pcm16_as_wav(utterance("What a lovely morning."), 24_000)
    config = pb.TurnConfig(model="gpt-4o-audio-preview", modalities=[pb.MODALITY_TEXT])
    question = pb.UserMessage(audio=pb.AudioInput(data=wav))
    answers = {
        kind: await _turn(stubs[kind], pb.StreamTurnRequest(config=config, input=question))
        for kind in KINDS_COMPARED
    }
    answer = _same(answers)
    assert "seconds of audio" in answer.text and not answer.audio


@module_loop
async def test_a_tool_call_and_its_result_read_back(stubs: dict[str, Any]) -> None:
    config = pb.TurnConfig(model="gpt-4o-audio-preview", modalities=SPOKEN, tools=[WEATHER])
    question = pb.UserMessage(text="What does get_weather say for Oslo?")
    calls = {
        kind: await _turn(stubs[kind], pb.StreamTurnRequest(config=config, input=question))
        for kind in KINDS_COMPARED
    }
    call_answer = _same(calls)
    assert call_answer.completed is not None and call_answer.completed.reason == pb.FINISH_REASON_TOOL_CALLS
    results = {}
    for kind in KINDS_COMPARED:
        completed = calls[kind].completed
        assert completed is not None
        (call,) = completed.tool_calls
        history = [
            pb.HistoryItem(user=question),
            pb.HistoryItem(assistant=pb.AssistantMessage(text=completed.transcript, tool_calls=[call])),
            pb.HistoryItem(tool_result=pb.ToolResult(tool_call_id=call.id, content="Snow, minus 3")),
        ]
        results[kind] = await _turn(stubs[kind], pb.StreamTurnRequest(config=config, history=history))
    answer = _same(results)
    assert answer.text == "get_weather returned: Snow, minus 3."
