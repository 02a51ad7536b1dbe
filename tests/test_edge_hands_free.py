"""Server VAD over the WebSocket: turn_detection in the config, speech.started/stopped, barge-in by voice."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.edge_fixtures import RunningEdge
from tests.speech import chunks, ms_of, silence, utterance
from tests.test_edge_websocket import closed_with, open_conversation
from tests.upstream_server import FixtureUpstream

SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 400}


async def send_audio(ws: ClientConnection, pcm16: bytes) -> None:
    for piece in chunks(pcm16):
        await ws.send(piece)


async def frames_until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """The JSON frames up to and including the first of `kind` (binary audio skipped)."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            seen.append({"type": "audio"})
            continue
        seen.append(json.loads(frame))
        if seen[-1]["type"] == kind:
            return seen


async def test_hands_free_turn_over_websocket(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    ws = await open_conversation(edge, "fixture/audio_no_finish_reason", turn_detection=SERVER_VAD)
    speech = utterance("Is a golden retriever a good family dog?")
    await send_audio(ws, silence(700) + speech + silence(600))
    frames = await frames_until(ws, "turn.completed")
    kinds = [frame["type"] for frame in frames]
    assert kinds[:3] == ["speech.started", "speech.stopped", "turn.started"]
    assert abs(frames[0]["audio_start_ms"] - 700) <= 100
    assert abs(frames[1]["audio_end_ms"] - (700 + ms_of(speech))) <= 150
    assert frames[-1]["reason"] == "stop" and "audio" in kinds
    assert len(upstream.requests) == 1
    await ws.close()


async def test_barge_in_by_voice_over_websocket(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    ws = await open_conversation(edge, "slow/audio_no_finish_reason", turn_detection=SERVER_VAD)
    await send_audio(ws, silence(500) + utterance("Tell me about dogs.") + silence(500))
    await frames_until(ws, "turn.started")
    await send_audio(ws, utterance("Wait, stop, tell me about cats instead.", "nova"))
    frames = await frames_until(ws, "turn.completed")
    kinds = [frame["type"] for frame in frames]
    assert "audio" not in kinds[kinds.index("speech.started") :]
    assert frames[-1]["reason"] == "interrupted"
    await ws.close()


@pytest.mark.parametrize(
    ("turn_detection", "message"),
    [
        ({"type": "vad"}, "turn_detection.type"),
        ({"type": "server_vad", "threshold": "high"}, "turn_detection.threshold"),
        ({"type": "server_vad", "threshold": 2}, "turn_detection.threshold"),
        ({"type": "server_vad", "silence_duration_ms": -5}, "turn_detection.silence_duration_ms"),
        ({"type": "server_vad", "eagerness": "high"}, "turn_detection.eagerness"),
        ("server_vad", "'turn_detection' must be an object"),
    ],
)
async def test_bad_turn_detection_closes_1007_naming_the_field(
    edge: RunningEdge, turn_detection: Any, message: str
) -> None:
    async with connect(edge.ws_url, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", "turn_detection": turn_detection}))
        code, error = await closed_with(ws)
    assert code == 1007
    assert error is not None and message in error["message"]
