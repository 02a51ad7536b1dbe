"""The same answer through every edge transport (SSE, WebSocket, OpenAI-compatible) is the same whichever
upstream API produced it: an edge in front of a service on each, real HTTP and WebSocket clients."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from adapters.edge_server import EdgeServer
from tests.realtime_fixtures import Both, serve_both

pytestmark = pytest.mark.asyncio(loop_scope="module")
QUESTION = "Is a golden retriever a good family dog?"
ANSWERS = ["audio_no_finish_reason", "text_only", "tool_calls_after_speech"]
# What differs by design: ids, times, the Chat Completions audio id and its expiry, the usage counts only
# Chat Completions reports (reasoning, prediction tokens).
DIFFERENT = {"turn_id", "id", "conversation_id", "upstream_request_id", "audio_id", "audio_expires_at"}
DIFFERENT |= {"expires_at", "created", "system_fingerprint"}


@dataclass
class Edges:
    both: Both
    chat: str  # base URL of the edge in front of the Chat Completions service
    realtime: str  # and of the one in front of the Realtime service


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def edges() -> AsyncIterator[Edges]:
    async with serve_both() as both:
        chat = EdgeServer(replace(both.realtime_settings, http_port=0), both.chat_target)
        realtime = EdgeServer(replace(both.realtime_settings, http_port=0), both.realtime_target)
        chat_port, realtime_port = await chat.start(), await realtime.start()
        try:
            yield Edges(both, f"127.0.0.1:{chat_port}", f"127.0.0.1:{realtime_port}")
        finally:
            await chat.stop()
            await realtime.stop()


def same_parts(value: Any) -> Any:
    """The value without what differs by design (see DIFFERENT)."""
    if isinstance(value, dict):
        return {
            key: same_parts(item)
            for key, item in value.items()
            if key not in DIFFERENT and "reasoning" not in key and "prediction" not in key
        }
    if isinstance(value, list):
        return [same_parts(item) for item in value]
    return value


async def sse_turn(host: str, model: str) -> list[Any]:
    async with httpx.AsyncClient(base_url=f"http://{host}") as client:
        response = await client.post("/v1/turns", json={"text": QUESTION, "model": model})
    assert response.status_code == 200
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append((fields["event"], same_parts(json.loads(fields["data"]))))
    return events


async def websocket_turn(host: str, model: str) -> list[Any]:
    frames: list[Any] = []
    url = f"ws://{host}/v1/converse"
    async with connect(url, subprotocols=["audiochat.v1"], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": model}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"
        await ws.send(json.dumps({"type": "text", "text": QUESTION}))
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                frames.append(frame)  # the header holds turn index, sequence and start sample: all equal
                continue
            event = json.loads(frame)
            frames.append(same_parts(event))
            if event["type"] == "turn.completed":
                return frames


async def compat_turn(host: str, model: str) -> list[Any]:
    client = openai.AsyncOpenAI(base_url=f"http://{host}/v1", api_key="sk-anything", max_retries=0)
    stream = await client.chat.completions.create(
        model=model,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [same_parts(chunk.model_dump(exclude_unset=True)) async for chunk in stream]
    await client.close()
    # The chunk that carries only the audio id and its expiry (Chat Completions' own; nothing is left of it).
    id_only = [{"delta": {"audio": {}}, "index": 0, "finish_reason": None}]
    return [chunk for chunk in chunks if chunk.get("choices") != id_only]


@pytest.mark.parametrize("name", ANSWERS)
@pytest.mark.parametrize("transport", ["sse", "websocket", "openai"])
async def test_every_transport_gives_the_same_answer_whichever_upstream(
    edges: Edges, transport: str, name: str
) -> None:
    turn = {"sse": sse_turn, "websocket": websocket_turn, "openai": compat_turn}[transport]
    chat = await turn(edges.chat, f"fixture/{name}")
    realtime = await turn(edges.realtime, f"fixture/{name}")
    assert realtime == chat
    assert len(chat) > 5, "a whole answer, not an early error"
    if transport == "openai" and name != "text_only":
        pcm = b"".join(
            base64.b64decode(((choice.get("delta") or {}).get("audio") or {}).get("data") or "")
            for chunk in realtime
            for choice in chunk.get("choices") or []
        )
        assert len(pcm) > 24_000, "the audio itself went through"
