"""Recordings in and encoded answers out through the edge: SSE (JSON and multipart), the WebSocket (a
webm recording streamed in pieces, binary frames with their header) and the OpenAI-compatible route (the
real openai SDK), all against the offline voice with real codecs."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from websockets.asyncio.client import connect

from service.audio import parse_wav
from service.offline.server import OfflineVoiceServer
from tests.audio_files import (
    INPUT_KINDS,
    ONE_FRAME_MS,
    decode_to_24k,
    encode_recording,
    pcm_ms,
    snr_db,
    speech,
)
from tests.edge_fixtures import RunningEdge, StartEdge, sdk_audio
from tests.test_edge_websocket import HEADER, closed_with

SPEECH_MS = pcm_ms(speech())


@pytest.fixture
async def offline_edge(start_edge: StartEdge, start_service: Any) -> AsyncIterator[RunningEdge]:
    async with OfflineVoiceServer() as voice:
        yield await start_edge(await start_service(base_url=voice.base_url))


def heard_seconds(transcript: str) -> float:
    found = re.search(r"I heard ([0-9.]+) seconds", transcript)
    assert found, transcript
    return float(found.group(1))


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.split(b"\n\n"):
        lines = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_sse_multipart_m4a_voice_note(offline_edge: RunningEdge) -> None:
    note = encode_recording(speech(), INPUT_KINDS["m4a-aac-44k-stereo"])
    async with httpx.AsyncClient(base_url=offline_edge.base_url, timeout=30) as client:
        # Named and typed as something else: the bytes decide.
        files = {"audio": ("note.wav", note, "audio/wav")}
        response = await client.post("/v1/turns", files=files, data={"voice": "alloy"})
    events = sse_events(response.content)
    assert response.status_code == 200, response.text
    assert abs(events[0][1]["input_audio_ms"] - SPEECH_MS) <= ONE_FRAME_MS
    assert heard_seconds(events[-1][1]["transcript"]) == pytest.approx(SPEECH_MS / 1000, abs=0.051)


@pytest.mark.parametrize("kind", ["webm-opus-48k-mono", "ogg-vorbis-44k-stereo", "flac-16k-mono"])
async def test_sse_json_recording_with_an_opus_answer(offline_edge: RunningEdge, kind: str) -> None:
    data = base64.b64encode(encode_recording(speech(), INPUT_KINDS[kind])).decode()
    body = {"audio": {"data": data}, "output_audio": {"format": "opus", "bitrate_bps": 24000}}
    async with httpx.AsyncClient(base_url=offline_edge.base_url, timeout=30) as client:
        response = await client.post("/v1/turns", json=body)
    events = sse_events(response.content)
    assert abs(events[0][1]["input_audio_ms"] - SPEECH_MS) <= ONE_FRAME_MS
    assert events[0][1]["audio_format"]["encoding"] == "opus"
    audio = [body for name, body in events if name == "audio.delta"]
    assert {delta["encoding"] for delta in audio} == {"opus"}
    assert audio[0]["samples"] == 0 and base64.b64decode(audio[0]["data"]).startswith(b"OggS")
    done = events[-1][1]
    assert sum(delta["samples"] for delta in audio) == done["audio_samples"]
    decoded = decode_to_24k(b"".join(base64.b64decode(delta["data"]) for delta in audio))
    assert len(decoded) == done["audio_samples"], "Ogg Opus trims its pre-skip: exact"


async def test_sse_refuses_unreadable_audio_and_unknown_output(offline_edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=offline_edge.base_url, timeout=30) as client:
        junk = await client.post(
            "/v1/turns", files={"audio": ("a.m4a", b"\x00\x00\x00\x18ftypM4A " + bytes(64))}
        )
        amr = await client.post("/v1/turns", files={"audio": ("a.amr", b"#!AMR\n" + bytes(64))})
        output = await client.post("/v1/turns", json={"text": "hi", "output_audio": "vorbis"})
    assert junk.status_code == 400 and "unreadable M4A" in junk.json()["error"]["message"]
    assert amr.status_code == 400 and "amr audio is not a supported format" in amr.json()["error"]["message"]
    assert output.status_code == 400 and "output_audio.format" in output.json()["error"]["message"]


async def _ws_turn(
    edge: RunningEdge, recording: bytes, config: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """Send `recording` in ~250 ms pieces as binary frames, commit; (events, binary frames) of the turn."""
    ws = await connect(edge.ws_url, subprotocols=["audiochat.v1"], compression=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "config", **config}))
    assert json.loads(await ws.recv())["type"] == "conversation.started"
    piece = len(recording) // 8 + 1  # MediaRecorder(timeslice=250) on a 2 s recording
    for start in range(0, len(recording), piece):
        await ws.send(recording[start : start + piece])
    await ws.send(json.dumps({"type": "commit"}))
    events: list[dict[str, Any]] = []
    frames: list[bytes] = []
    while not events or events[-1]["type"] not in ("turn.completed", "error"):
        frame = await ws.recv()
        if isinstance(frame, bytes):
            frames.append(frame)
        else:
            events.append(json.loads(frame))
    await ws.close()
    return events, frames


async def test_websocket_streamed_webm_recording_and_webm_answer(offline_edge: RunningEdge) -> None:
    recording = encode_recording(speech(), INPUT_KINDS["webm-opus-48k-mono"])
    config = {"input_audio": {"encoding": "webm"}, "output_audio": "webm_opus"}
    events, frames = await _ws_turn(offline_edge, recording, config)
    assert abs(events[0]["input_audio_ms"] - SPEECH_MS) <= ONE_FRAME_MS
    assert events[0]["audio_format"]["encoding"] == "webm_opus"
    done = events[-1]
    assert heard_seconds(done["transcript"]) == pytest.approx(SPEECH_MS / 1000, abs=0.051)
    assert frames[0][HEADER.size :].startswith(b"\x1a\x45\xdf\xa3"), (
        "the first binary frame is the WebM header"
    )
    starts = [HEADER.unpack_from(frame)[2] for frame in frames]
    assert starts == sorted(starts) and starts[-1] <= done["audio_samples"]
    decoded = decode_to_24k(b"".join(frame[HEADER.size :] for frame in frames))
    assert len(decoded) == done["audio_samples"]


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("ogg-opus-48k-stereo", "ogg"),
        ("m4a-aac-44k-stereo", "m4a"),
        ("flac-16k-mono", "flac"),
        ("wav-8k-stereo-s16", "wav"),
    ],
)
async def test_websocket_streamed_recordings_of_each_kind(
    offline_edge: RunningEdge, kind: str, label: str
) -> None:
    recording = encode_recording(speech(), INPUT_KINDS[kind])
    events, frames = await _ws_turn(offline_edge, recording, {"input_audio": {"encoding": label}})
    assert abs(events[0]["input_audio_ms"] - SPEECH_MS) <= ONE_FRAME_MS
    assert heard_seconds(events[-1]["transcript"]) == pytest.approx(SPEECH_MS / 1000, abs=0.051)
    assert sum(len(frame) - HEADER.size for frame in frames) == 2 * events[-1]["audio_samples"], (
        "pcm16 answer"
    )


async def test_websocket_unreadable_recording_closes_1007(offline_edge: RunningEdge) -> None:
    ws = await connect(offline_edge.ws_url, subprotocols=["audiochat.v1"], compression=None)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "config", "input_audio": {"encoding": "webm"}}))
    await ws.recv()
    await ws.send(b"\x1a\x45\xdf\xa3" + bytes(3000))
    await ws.send(json.dumps({"type": "commit"}))
    code, error = await closed_with(ws)
    assert code == 1007 and error is not None and "unreadable recording" in error["message"]


@pytest.fixture
async def compat(offline_edge: RunningEdge) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{offline_edge.base_url}/v1", api_key="sk-anything", max_retries=0
    ) as client:
        yield client


def _input_audio(kind: str) -> dict[str, Any]:
    data = base64.b64encode(encode_recording(speech(), INPUT_KINDS[kind])).decode()
    label = kind.split("-")[0]
    return {"type": "input_audio", "input_audio": {"data": data, "format": label}}


@pytest.mark.parametrize(
    ("audio_format", "recording"),
    [
        ("opus", "m4a-aac-44k-stereo"),
        ("aac", "webm-opus-48k-mono"),
        ("mp3", "ogg-vorbis-44k-stereo"),
        ("flac", "flac-16k-mono"),
        ("wav", "ogg-opus-48k-stereo"),
    ],
)
async def test_compat_streams_any_audio_format_by_transcoding(
    compat: openai.AsyncOpenAI, audio_format: str, recording: str
) -> None:
    client: Any = compat  # the SDK's overloads do not take audio formats it has no literal for
    stream = await client.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": audio_format},
        messages=[{"role": "user", "content": [_input_audio(recording)]}],
        stream=True,
    )
    data, transcript = bytearray(), ""
    async for chunk in stream:
        if chunk.choices:
            audio = sdk_audio(chunk.choices[0].delta)
            data += base64.b64decode(audio.get("data", ""))
            transcript += audio.get("transcript", "")
    assert heard_seconds(transcript) == pytest.approx(SPEECH_MS / 1000, abs=0.051)
    decoded = decode_to_24k(bytes(data))
    assert len(decoded) > 24_000, "a decodable answer of more than a second"
    if audio_format == "wav":
        assert parse_wav(bytes(data)).sample_rate == 24_000


@pytest.mark.parametrize("audio_format", ["opus", "mp3", "aac", "flac"])
async def test_compat_whole_answer_in_the_asked_format(compat: openai.AsyncOpenAI, audio_format: str) -> None:
    client: Any = compat
    question = [{"role": "user", "content": "Tell me about dogs."}]
    pcm = await client.chat.completions.create(
        model="m",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=question,
    )
    encoded = await client.chat.completions.create(
        model="m",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": audio_format},
        messages=question,
    )
    assert pcm.choices[0].message.audio is not None and encoded.choices[0].message.audio is not None
    reference = np.frombuffer(base64.b64decode(pcm.choices[0].message.audio.data), "<i2")
    decoded = decode_to_24k(base64.b64decode(encoded.choices[0].message.audio.data))
    assert 0 <= len(decoded) - len(reference) <= 2304
    assert snr_db(reference, decoded) > 8.0
