"""/v1/converse end to end with the `websockets` client: JSON control frames, binary audio both ways."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.audio import parse_wav
from tests.conftest import StartService
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.events import expected
from tests.upstream_server import FixtureUpstream

HEADER = struct.Struct("<IIQ")


@dataclass
class Turn:
    """One turn as the client saw it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    frames: int = 0

    @property
    def completed(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(event["text"] for event in self.events if event["type"] == "text.delta")


async def open_conversation(edge: RunningEdge, model: str, **config: Any) -> ClientConnection:
    ws = await connect(edge.ws_url, subprotocols=["audiochat.v1"], compression=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "config", "model": model, **config}))
    started = json.loads(await ws.recv())
    assert started["type"] == "conversation.started" and started["conversation_id"].startswith("conv_")
    return ws


async def read_turn(ws: ClientConnection, until_audio_frames: int = 0) -> Turn:
    """Read frames until turn.completed (or until that many audio frames), checking the framing."""
    turn = Turn()
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            turn_index, sequence, start_sample = HEADER.unpack_from(frame)
            assert turn_index == turn.events[0]["turn_index"]
            assert start_sample * 2 == len(turn.audio)
            assert sequence == len(turn.events) + turn.frames + 1
            turn.audio += frame[HEADER.size :]
            turn.frames += 1
            if turn.frames == until_audio_frames:
                return turn
            continue
        event = json.loads(frame)
        assert event["sequence"] == len(turn.events) + turn.frames + 1
        turn.events.append(event)
        if event["type"] == "turn.completed":
            return turn


async def closed_with(ws: ClientConnection) -> tuple[int, dict[str, Any] | None]:
    """The close code, and the error message sent just before it."""
    error = None
    try:
        while True:
            frame = await ws.recv()
            if isinstance(frame, str) and json.loads(frame)["type"] == "error":
                error = json.loads(frame)
    except ConnectionClosed as closed:
        received = closed.rcvd
    assert received is not None, "the server closed without a close frame"
    return received.code, error


@pytest.mark.parametrize("name", ["audio_no_finish_reason", "text_only"])
async def test_text_turn_streams_events_and_binary_audio(edge: RunningEdge, name: str) -> None:
    ws = await open_conversation(edge, f"fixture/{name}")
    assert ws.subprotocol == "audiochat.v1"
    await ws.send(json.dumps({"type": "text", "text": "Is a golden retriever a good family dog?"}))
    turn = await read_turn(ws)
    want = expected(name)
    assert turn.events[0]["type"] == "turn.started" and turn.events[0]["turn_index"] == 1
    assert turn.events[0]["audio_format"] == {"encoding": "pcm16", "sample_rate_hz": 24000, "channels": 1}
    assert turn.text == want["text"] == turn.completed["transcript"]
    assert hashlib.sha256(turn.audio).hexdigest() == want["audio_sha256"]
    assert turn.completed["reason"] == "stop" and turn.completed["audio_samples"] * 2 == want["audio_bytes"]
    await ws.close()


async def test_push_to_talk_sends_the_recording_at_its_rate(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    ws = await open_conversation(
        edge,
        "fixture/audio_finish_before_expires",
        input_audio={"encoding": "pcm16", "sample_rate_hz": 16000},
    )
    pcm = bytes(range(256)) * 64
    for offset in range(0, len(pcm), 4096):
        await ws.send(pcm[offset : offset + 4096])
    await ws.send(json.dumps({"type": "commit", "text": "Listen"}))
    turn = await read_turn(ws)
    assert hashlib.sha256(turn.audio).hexdigest() == expected("audio_finish_before_expires")["audio_sha256"]
    assert turn.events[0]["input_audio_ms"] == len(pcm) * 1000 // 32000
    parts = upstream.requests[-1]["messages"][-1]["content"]
    wav = base64.b64decode(
        next(part["input_audio"]["data"] for part in parts if part["type"] == "input_audio")
    )
    info = parse_wav(wav)
    assert info.sample_rate == 16000 and wav[info.data_offset :] == pcm
    # A second turn on the same socket carries the next turn_index.
    await ws.send(json.dumps({"type": "text", "text": "Again"}))
    assert (await read_turn(ws)).events[0]["turn_index"] == 2
    await ws.close()


async def test_interrupt_stops_the_answer_and_closes_the_upstream(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    ws = await open_conversation(edge, "slow/audio_no_finish_reason")
    await ws.send(json.dumps({"type": "text", "text": "Tell me a long story"}))
    heard = await read_turn(ws, until_audio_frames=2)
    await ws.send(json.dumps({"type": "interrupt", "played_ms": 120}))
    async with asyncio.timeout(5):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str) and json.loads(frame)["type"] == "turn.completed":
                completed = json.loads(frame)
                break
        await upstream.client_closed.wait()
    assert completed["reason"] == "interrupted" and completed["played_ms"] == 120
    assert completed["turn_index"] == heard.events[0]["turn_index"]
    assert upstream.closed_by_client == 1
    await ws.close()


async def test_client_going_away_closes_the_upstream(
    start_edge: StartEdge, start_service: StartService, upstream: FixtureUpstream
) -> None:
    # No grace kept for a resume (with one, the turn runs on: tests/test_conversation_resume.py).
    edge = await start_edge(await start_service(conversation_orphan_seconds=0))
    ws = await open_conversation(edge, "slow/audio_no_finish_reason")
    await ws.send(json.dumps({"type": "text", "text": "Tell me a long story"}))
    await read_turn(ws, until_audio_frames=1)
    await ws.close()
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


@pytest.mark.parametrize(
    ("first", "then", "code"),
    [
        ("not json", None, 1007),
        (json.dumps({"type": "config", "modalities": ["smell"]}), None, 1007),
        (json.dumps({"type": "text", "text": "before config"}), None, 1008),
        (json.dumps({"type": "config"}), json.dumps({"type": "dance"}), 1007),
        (json.dumps({"type": "config"}), json.dumps({"type": "interrupt", "played_ms": -1}), 1007),
        (json.dumps({"type": "config"}), json.dumps({"type": "config"}), 1008),
        (json.dumps({"type": "config"}), b"\x00" * 70_000, 1009),
    ],
)
async def test_bad_messages_get_their_close_code_and_the_edge_keeps_serving(
    start_edge: StartEdge, first: str, then: str | bytes | None, code: int
) -> None:
    edge = await start_edge(ws_max_message_bytes=64 * 1024)
    async with connect(edge.ws_url, compression=None, max_size=None) as ws:
        await ws.send(first)
        if then is not None:
            assert json.loads(await ws.recv())["type"] == "conversation.started"
            await ws.send(then)
        close_code, error = await closed_with(ws)
    assert close_code == code
    if code != 1009:  # the protocol layer itself refuses an oversized frame
        assert error is not None and error["message"]
    ws = await open_conversation(edge, "fixture/text_only")
    await ws.send(json.dumps({"type": "text", "text": "Still there?"}))
    assert (await read_turn(ws)).text == expected("text_only")["text"]
    await ws.close()


async def test_a_refused_turn_is_in_band_and_the_conversation_goes_on(edge: RunningEdge) -> None:
    ws = await open_conversation(edge, "status/429/rate_limit_exceeded")
    await ws.send(json.dumps({"type": "text", "text": "Hi"}))
    turn = await read_turn(ws)
    assert turn.completed["reason"] == "error"
    assert (
        turn.completed["error"]["code"] == "resource_exhausted"
        and turn.completed["error"]["retry_after_ms"] == 1500
    )
    await ws.close()


async def test_idle_connections_are_closed(start_edge: StartEdge) -> None:
    edge = await start_edge(idle_timeout_seconds=0.2)
    ws = await open_conversation(edge, "fixture/text_only")
    code, error = await closed_with(ws)
    assert code == 1001 and error is not None and error["code"] == "idle"
