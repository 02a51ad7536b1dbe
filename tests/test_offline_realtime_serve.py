"""`audiochat serve` with AUDIOCHAT_UPSTREAM=offline-realtime, as `make run` can start it: every answer goes
through the gateway's Realtime upstream to the offline voice's `/v1/realtime`, over gRPC and the WebSocket
edge, and says what the Chat Completions face would say, down to the audio bytes."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.offline.answer import compose_answer
from service.offline.speech import synthesize
from tests.events import Collected
from tests.processes import ServeProcess, audiochat_serve
from tests.speech import utterance

QUESTION = "Is a golden retriever a good family dog?"
HEADER = struct.Struct("<IIQ")  # turn index, sequence, start sample of a binary audio frame


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def serve() -> Iterator[tuple[ServeProcess, dict[str, Any]]]:
    """The service on the offline voice's Realtime face, speaking at four times playback speed (so an
    answer can be interrupted while it streams, and a whole one takes about a second)."""
    metrics_port = _free_port()
    environment = {
        "AUDIOCHAT_UPSTREAM": "offline-realtime",
        "AUDIOCHAT_OFFLINE_REALTIME_FACTOR": "4",
        "AUDIOCHAT_METRICS_PORT": str(metrics_port),
    }
    with audiochat_serve(env=environment) as process:
        ready = process.wait_for("audiochat ready")
        yield process, {**ready, "metrics_port": metrics_port}
        assert process.stop() == 0


def _same_speech(heard: bytes, spoken_here: bytes) -> bool:
    """Whether two syntheses of the same text by the same voice match: espeak-ng carries a little waveform
    state from one utterance to the next, so another process's differs by a few samples, never in length
    by more than a few milliseconds, and another voice or text differs by far more."""
    return len(heard) % 2 == 0 and abs(len(heard) - len(spoken_here)) <= 48 * 20


def _stream_turn(port: int, request: pb.StreamTurnRequest) -> Collected:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        collected = Collected()
        for event in pb_grpc.AudioChatServiceStub(channel).StreamTurn(request, timeout=30):
            collected.add(event)
        return collected


def test_stream_turn_says_what_the_chat_completions_face_says(serve: tuple[ServeProcess, Any]) -> None:
    _, ready = serve
    assert ready["upstream"] == "offline-realtime" and ready["model"] == "gpt-realtime"
    config = pb.TurnConfig(modalities=[pb.MODALITY_TEXT, pb.MODALITY_AUDIO], voice="coral")
    turn = _stream_turn(
        ready["grpc_port"], pb.StreamTurnRequest(config=config, input=pb.UserMessage(text=QUESTION))
    )
    assert turn.completed is not None and turn.completed.reason == pb.FINISH_REASON_STOP
    answer = compose_answer(QUESTION, None)
    assert turn.text == answer == turn.completed.transcript
    assert _same_speech(bytes(turn.audio), synthesize(answer, "coral"))
    assert turn.completed.audio_id == "", "Realtime answers have no Chat Completions audio id"
    assert turn.usage is not None and turn.usage.output_audio_tokens > 0
    # The model mapping works on the offline voice as on OpenAI: a Chat Completions model goes there.
    config = pb.TurnConfig(model="gpt-4o-audio-preview", modalities=[pb.MODALITY_TEXT, pb.MODALITY_AUDIO])
    chat = _stream_turn(
        ready["grpc_port"], pb.StreamTurnRequest(config=config, input=pb.UserMessage(text=QUESTION))
    )
    assert chat.text == answer and chat.completed is not None and chat.completed.audio_id.startswith("audio_")
    with urllib.request.urlopen(f"http://127.0.0.1:{ready['metrics_port']}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    assert 'audiochat_turns_total{outcome="stop",transport="grpc",upstream="realtime"} 1.0' in metrics
    assert 'audiochat_turns_total{outcome="stop",transport="grpc",upstream="chat_completions"} 1.0' in metrics


async def _read_turn(
    ws: ClientConnection, until_audio_frames: int = 0, audio_before: int = 0
) -> tuple[list[dict[str, Any]], bytes]:
    """A turn's JSON events and audio bytes, up to turn.completed (or that many audio frames)."""
    events: list[dict[str, Any]] = []
    audio = bytearray()
    frames = 0
    async with asyncio.timeout(30):
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                _, _, start_sample = HEADER.unpack_from(frame)
                assert start_sample * 2 == audio_before + len(audio)
                audio += frame[HEADER.size :]
                frames += 1
                if frames == until_audio_frames:
                    return events, bytes(audio)
                continue
            events.append(json.loads(frame))
            if events[-1]["type"] == "turn.completed":
                return events, bytes(audio)


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "text.delta")


async def test_websocket_conversation_typed_spoken_interrupted(serve: tuple[ServeProcess, Any]) -> None:
    """One conversation = one Realtime session: a typed turn, push-to-talk audio, an interrupt (which
    becomes response.cancel + conversation.item.truncate upstream), and the session going on after it."""
    _, ready = serve
    url = f"ws://127.0.0.1:{ready['http_port']}/v1/converse"
    async with connect(url, subprotocols=["audiochat.v1"], compression=None, max_size=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "voice": "echo"}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"

        await ws.send(json.dumps({"type": "text", "text": QUESTION}))
        events, audio = await _read_turn(ws)
        assert events[-1]["reason"] == "stop"
        assert _text(events) == compose_answer(QUESTION, None)
        assert _same_speech(audio, synthesize(compose_answer(QUESTION, None), "echo"))

        speech = utterance("What a lovely morning.")
        for start in range(0, len(speech), 9600):
            await ws.send(speech[start : start + 9600])
        await ws.send(json.dumps({"type": "commit"}))
        events, audio = await _read_turn(ws)
        heard = compose_answer("", len(speech) // 48 / 1000)
        assert events[-1]["reason"] == "stop" and _text(events) == heard
        assert _same_speech(audio, synthesize(heard, "echo"))

        await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about a lighthouse keeper."}))
        events, audio = await _read_turn(ws, until_audio_frames=2)
        played_ms = len(audio) // 48 // 2
        await ws.send(json.dumps({"type": "interrupt", "played_ms": played_ms}))
        # Audio already on its way when the interrupt left still arrives, in place, before the end.
        rest, _ = await _read_turn(ws, audio_before=len(audio))
        completed = rest[-1]
        assert completed["reason"] == "interrupted" and completed["played_ms"] == played_ms

        await ws.send(json.dumps({"type": "text", "text": "Are you still there?"}))
        events, _ = await _read_turn(ws)
        assert events[-1]["reason"] == "stop"
        assert _text(events) == compose_answer("Are you still there?", None)
