"""POST /v1/turns end to end: a real uvicorn edge, a real gRPC core, the local upstream, an SSE client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import httpx
import httpx_sse
import pytest

from service.audio import wrap_pcm16_as_wav
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.events import expected
from tests.upstream_server import FixtureUpstream

MP3_FRAME = bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(417 - 4)  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz


def blocks(raw: bytes) -> list[bytes]:
    """The whole events of a raw SSE body, heartbeat comments left out."""
    parts = raw.split(b"\n\n")[:-1]  # the last part is empty or an event cut in the middle
    return [part + b"\n\n" for part in parts if not part.startswith(b":")]


def parse(block: bytes) -> tuple[str, str, dict[str, Any]]:
    """(event, id, data) of one event block."""
    lines = dict(line.split(": ", 1) for line in block.decode().strip().split("\n"))
    return lines["event"], lines["id"], json.loads(lines["data"])


def fold(events: list[bytes]) -> dict[str, Any]:
    """Transcript and audio of a turn's events, checking ids and start_sample on the way."""
    text, audio = "", bytearray()
    turn_id = parse(events[0])[2]["turn_id"]
    for number, block in enumerate(events, start=1):
        name, event_id, body = parse(block)
        assert event_id == f"{turn_id}:{number}"
        if name == "text.delta":
            text += body["text"]
        elif name == "audio.delta":
            assert body["start_sample"] * 2 == len(audio) and body["sample_rate_hz"] == 24000
            audio += base64.b64decode(body["data"])
    return {"text": text, "sha256": hashlib.sha256(audio).hexdigest(), "last": parse(events[-1])}


async def post_turn(edge: RunningEdge, **body: Any) -> tuple[httpx.Response, bytes]:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", json=body)
        return response, response.content


@pytest.mark.parametrize("name", ["audio_no_finish_reason", "audio_finish_before_expires", "text_only"])
async def test_turn_streams_what_the_upstream_sent(edge: RunningEdge, name: str) -> None:
    async with (
        httpx.AsyncClient(base_url=edge.base_url) as client,
        client.stream("POST", "/v1/turns", json={"text": "Hi", "model": f"fixture/{name}"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        # A real SSE client reads it as well.
        events = [event async for event in httpx_sse.EventSource(response).aiter_sse()]
    names = [event.event for event in events]
    assert names[0] == "turn.started" and names[-2:] == ["usage", "turn.completed"]
    want = expected(name)
    text = "".join(json.loads(event.data)["text"] for event in events if event.event == "text.delta")
    audio = b"".join(
        base64.b64decode(json.loads(event.data)["data"]) for event in events if event.event == "audio.delta"
    )
    assert text == want["text"]
    assert hashlib.sha256(audio).hexdigest() == want["audio_sha256"]
    completed = json.loads(events[-1].data)
    assert completed["reason"] == "stop" and completed["audio_id"] == (want["audio_id"] or "")
    assert completed["audio_samples"] * 2 == want["audio_bytes"]


async def test_heartbeats_while_the_model_is_quiet(edge: RunningEdge) -> None:
    response, raw = await post_turn(edge, text="Hi", model="slow/text_only")
    assert response.status_code == 200
    assert b": keep-alive\n\n" in raw
    assert fold(blocks(raw))["text"] == expected("text_only")["text"]


@pytest.mark.parametrize("name", ["audio_no_finish_reason", "audio_finish_before_expires"])
async def test_resume_after_a_drop_mid_audio_reassembles_identical_audio(
    edge: RunningEdge, upstream: FixtureUpstream, name: str
) -> None:
    first = bytearray()
    async with (
        httpx.AsyncClient(base_url=edge.base_url) as client,
        client.stream("POST", "/v1/turns", json={"text": "Hi", "model": f"slow/{name}"}) as response,
    ):
        async for chunk in response.aiter_raw():
            first += chunk
            deltas = sum(parse(block)[0] in ("audio.delta", "text.delta") for block in blocks(bytes(first)))
            if deltas >= 8:
                break  # the connection drops here, in the middle of the answer
    kept = blocks(bytes(first))
    last_id = parse(kept[-1])[1]
    turn_id = last_id.split(":")[0]
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        # Reconnect as EventSource does (GET), then as a POST client would; both pick up after the last id.
        resumed = await client.get(f"/v1/turns/{turn_id}/events", headers={"Last-Event-ID": last_id})
        again = await client.post("/v1/turns", json={"text": "ignored"}, headers={"Last-Event-ID": last_id})
        replay = await client.get(f"/v1/turns/{turn_id}/events")
    assert resumed.status_code == again.status_code == replay.status_code == 200
    rest = blocks(resumed.content)
    assert rest == blocks(again.content)
    assert kept + rest == blocks(replay.content), "a resume gets the same bytes"
    folded = fold(kept + rest)
    assert folded["sha256"] == expected(name)["audio_sha256"]
    assert folded["text"] == expected(name)["text"]
    assert upstream.streams_started == 1, "the model is called once"


async def test_a_turn_nobody_comes_back_for_is_stopped_upstream(
    start_edge: StartEdge, upstream: FixtureUpstream
) -> None:
    edge = await start_edge(sse_orphan_seconds=0.3)
    received = bytearray()
    async with (
        httpx.AsyncClient(base_url=edge.base_url) as client,
        client.stream(
            "POST", "/v1/turns", json={"text": "Hi", "model": "slow/audio_no_finish_reason"}
        ) as response,
    ):
        async for chunk in response.aiter_raw():
            received += chunk
            if len(blocks(bytes(received))) >= 3:
                break  # the client leaves for good
    await asyncio.wait_for(upstream.client_closed.wait(), timeout=5)
    assert upstream.closed_by_client == 1, "the upstream connection was closed, not read to its end"
    # What was produced before the turn stopped can still be fetched, and it ends without a completion.
    turn_id = parse(blocks(bytes(received))[0])[1].split(":")[0]
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        replay = await client.get(f"/v1/turns/{turn_id}/events")
    assert replay.status_code == 200
    assert all(parse(block)[0] != "turn.completed" for block in blocks(replay.content))


async def test_resume_of_an_unknown_or_expired_turn_is_404(start_edge: StartEdge) -> None:
    edge = await start_edge(resume_seconds=0.05)
    _, raw = await post_turn(edge, text="Hi", model="fixture/text_only")
    last_id = parse(blocks(raw)[-1])[1]
    turn_id = last_id.split(":")[0]
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        expired = await client.get(f"/v1/turns/{turn_id}/events", headers={"Last-Event-ID": last_id})
        unknown = await client.post("/v1/turns", json={}, headers={"Last-Event-ID": "turn_nope:3"})
        foreign = await client.get("/v1/turns/turn_a/events", headers={"Last-Event-ID": "turn_b:1"})
    assert expired.status_code == unknown.status_code == 404
    assert expired.json()["error"]["code"] == "not_found"
    assert foreign.status_code == 400


async def test_resume_buffers_respect_their_memory_cap(start_edge: StartEdge) -> None:
    edge = await start_edge(resume_buffer_bytes=50_000)
    _, raw_first = await post_turn(edge, text="Hi", model="fixture/audio_no_finish_reason")
    _, raw_second = await post_turn(edge, text="Hi", model="fixture/audio_finish_before_expires")
    # Each stream was whole for its live reader, though neither fits in the cap.
    assert fold(blocks(raw_first))["sha256"] == expected("audio_no_finish_reason")["audio_sha256"]
    assert fold(blocks(raw_second))["sha256"] == expected("audio_finish_before_expires")["audio_sha256"]
    context = edge.server.context
    assert context is not None and context.store.bytes <= 50_000
    turn_id = parse(blocks(raw_first)[0])[2]["turn_id"]
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        gone = await client.get(f"/v1/turns/{turn_id}/events")
    assert gone.status_code == 404


async def test_multipart_wav_upload_reaches_the_upstream_as_recorded(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    wav = wrap_pcm16_as_wav(bytes(range(256)) * 100, 16_000)
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post(
            "/v1/turns",
            data={"model": "fixture/text_only", "text": "What did I say?", "modalities": "text"},
            files={"audio": ("memo.wav", wav, "audio/wav")},
        )
        mp3 = await client.post(
            "/v1/turns",
            data={"model": "fixture/text_only"},
            files={"audio": ("memo.mp3", MP3_FRAME * 20, "audio/mpeg")},
        )
    assert response.status_code == mp3.status_code == 200
    assert fold(blocks(response.content))["text"] == expected("text_only")["text"]
    sent = upstream.requests[0]
    assert sent["modalities"] == ["text"]
    parts = sent["messages"][-1]["content"]
    assert {"type": "text", "text": "What did I say?"} in parts
    audio = next(part["input_audio"] for part in parts if part["type"] == "input_audio")
    assert audio["format"] == "wav" and base64.b64decode(audio["data"]) == wav
    mp3_parts = upstream.requests[1]["messages"][-1]["content"]
    assert any(part.get("input_audio", {}).get("format") == "mp3" for part in mp3_parts)


async def test_json_audio_history_and_config_reach_the_upstream(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    pcm = bytes(3200)
    response, _ = await post_turn(
        edge,
        model="fixture/text_only",
        voice="verse",
        instructions="Be brief.",
        audio={"data": base64.b64encode(pcm).decode(), "format": "pcm16", "sample_rate_hz": 16000},
        history=[{"role": "user", "text": "Hello"}, {"role": "assistant", "text": "Hi!"}],
    )
    assert response.status_code == 200
    sent = upstream.requests[0]
    assert sent["audio"]["voice"] == "verse"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][1:3] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_argument"),
        (b'{"text": ""}', 400, "invalid_argument"),
        (b'{"text": "hi", "modalities": ["video"]}', 400, "invalid_argument"),
        (b'{"audio": {"data": "AAAA", "format": "flac"}}', 400, "invalid_argument"),
        (b'{"audio": {"data": "UklGRgAAAABXQVZF", "format": "wav"}}', 400, "invalid_argument"),
        (b'{"text": "hi", "model": "status/429/rate_limit_exceeded"}', 429, "resource_exhausted"),
        (b'{"text": "hi", "model": "status/500/server_error"}', 502, "unavailable"),
        (b'{"text": "hi", "model": "status/400/unsupported_format"}', 400, "invalid_argument"),
    ],
)
async def test_errors_before_the_stream_are_statuses(
    edge: RunningEdge, body: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post("/v1/turns", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status
        assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
        if status == 429:
            assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "1500"
        # ...and the edge keeps serving.
        ok = await client.post("/v1/turns", json={"text": "hi", "model": "fixture/text_only"})
        assert ok.status_code == 200


async def test_size_limits_are_413(start_edge: StartEdge, start_service: Any) -> None:
    service = await start_service(max_turn_audio_seconds=1.0)
    edge = await start_edge(service, max_body_bytes=64 * 1024)
    long_wav = wrap_pcm16_as_wav(bytes(24_000 * 2 * 2))  # 96 kB: over the edge's body limit
    long_pcm = bytes(40_000)  # 2.5 s at 8 kHz: under the body limit, over the core's 1 s
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        body_too_big = await client.post(
            "/v1/turns",
            files={"audio": ("a.wav", long_wav, "audio/wav")},
            data={"model": "fixture/text_only"},
        )
        audio_too_long = await client.post(
            "/v1/turns",
            json={
                "model": "fixture/text_only",
                "audio": {
                    "data": base64.b64encode(long_pcm).decode(),
                    "format": "pcm16",
                    "sample_rate_hz": 8000,
                },
            },
        )
        ok = await client.post("/v1/turns", json={"text": "hi", "model": "fixture/text_only"})
    assert body_too_big.status_code == 413 and body_too_big.json()["error"]["code"] == "too_large"
    assert audio_too_long.status_code == 413, audio_too_long.text
    assert ok.status_code == 200


async def test_an_error_mid_answer_ends_the_turn_in_band(edge: RunningEdge) -> None:
    response, raw = await post_turn(edge, text="Hi", model="fixture/audio_midstream_error")
    assert response.status_code == 200
    folded = fold(blocks(raw))
    name, _, completed = folded["last"]
    assert name == "turn.completed" and completed["reason"] == "error"
    assert completed["error"]["code"] == "unavailable" and completed["error"]["retryable"]
    assert folded["sha256"] == expected("audio_midstream_error")["audio_sha256"]


async def test_a_call_failure_after_the_start_is_an_error_event(
    start_edge: StartEdge, start_service: Any
) -> None:
    edge = await start_edge(await start_service(drain_seconds=0.0))
    async with (
        httpx.AsyncClient(base_url=edge.base_url) as client,
        client.stream(
            "POST", "/v1/turns", json={"text": "Hi", "model": "slow/audio_no_finish_reason"}
        ) as response,
    ):
        raw = bytearray()
        stopping: asyncio.Task[None] | None = None
        async for chunk in response.aiter_raw():
            raw += chunk
            if stopping is None and len(blocks(bytes(raw))) >= 2:
                # The core stops mid-answer, with no drain grace.
                stopping = asyncio.create_task(edge.service.server.stop())
        assert stopping is not None
        await stopping
    name, _, body = parse(blocks(bytes(raw))[-1])
    assert name == "error" and body["error"]["code"] == "unavailable"
