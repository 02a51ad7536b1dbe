"""A WebSocket conversation moves between two edges (real uvicorn) in front of one core keeping its
conversations in a real redis-server: the socket drops mid-answer on edge A, the client resumes through
edge B and gets the rest and the history; another key is refused; Redis stopped mid-conversation; the
core running an answer killed, and the resume on another core reporting it cut."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from adapters.websocket import AUDIO_HEADER
from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.conversation_resume import CUT_GONE
from service.state.conversations_redis import LEASE_SECONDS
from tests.conftest import RunningService, StartService
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.events import expected
from tests.processes import audiochat_serve
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.upstream_server import FixtureUpstream

PAUSE = "pause/0.5/audio_no_finish_reason"  # its first event, half a second of nothing, then the rest
FAST = "fresh/audio_no_finish_reason"
QUICK_REDIS = 0.3  # seconds for each Redis reply: a stopped Redis is found out fast


def keyed(key: str) -> list[Subprotocol]:
    return [Subprotocol("audiochat.v1"), Subprotocol(f"audiochat.bearer.{key}")]


@pytest.fixture
async def core(start_service: StartService, redis_server: RedisServer) -> AsyncIterator[RunningService]:  # noqa: F811
    yield await start_service(redis_url=redis_server.url, redis_timeout_seconds=QUICK_REDIS)
    if not redis_server.running:
        redis_server.start()


async def two_edges(start_edge: StartEdge, core: RunningService, **settings: Any) -> list[RunningEdge]:
    return [await start_edge(core, **settings) for _ in range(2)]


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next text frame."""
    async with asyncio.timeout(10):
        frame = await ws.recv()
    assert isinstance(frame, str), "a text frame was expected"
    body: dict[str, Any] = json.loads(frame)
    return body


async def open_on(edge: RunningEdge, model: str, key: str = "key-a") -> tuple[ClientConnection, str]:
    ws = await connect(edge.ws_url, subprotocols=keyed(key), compression=None)
    await ws.send(json.dumps({"type": "config", "model": model, "resume_grace_ms": 10_000}))
    started = await receive(ws)
    assert started["type"] == "conversation.started" and started["resumable"] is True
    return ws, str(started["conversation_id"])


async def next_frame(ws: ClientConnection, audio: bytearray) -> tuple[int, dict[str, Any] | None]:
    """One frame's sequence and its JSON event, or None for audio, appended to `audio` (whole, in order)."""
    async with asyncio.timeout(10):
        frame = await ws.recv()
    if isinstance(frame, bytes):
        _, sequence, start_sample = AUDIO_HEADER.unpack_from(frame)
        assert start_sample * 2 == len(audio)
        audio += frame[AUDIO_HEADER.size :]
        return sequence, None
    event: dict[str, Any] = json.loads(frame)
    return event["sequence"], event


async def rest_of_turn(ws: ClientConnection, audio: bytearray, sequence: int) -> dict[str, Any]:
    """Frames until turn.completed: audio appended to `audio`; sequences must follow `sequence` gap-free."""
    while True:
        seq, event = await next_frame(ws, audio)
        assert seq == sequence + 1, "no event lost or repeated across the resume"
        if event is not None and event["type"] == "turn.completed":
            return event
        sequence = seq


async def test_a_socket_dropped_mid_answer_resumes_on_another_edge(
    start_edge: StartEdge, core: RunningService, upstream: FixtureUpstream
) -> None:
    edge_a, edge_b = await two_edges(start_edge, core, api_keys="key-a,key-b")
    ws, conversation_id = await open_on(edge_a, PAUSE)
    await ws.send(json.dumps({"type": "text", "text": "Is a golden retriever a good family dog?"}))
    first = await receive(ws)
    assert first["type"] == "turn.started"
    ws.transport.abort()  # the phone changed networks: no close handshake

    # Another key may not take the conversation over.
    async with connect(edge_b.ws_url, subprotocols=keyed("key-b")) as thief:
        await thief.send(json.dumps({"type": "resume", "conversation_id": conversation_id}))
        refused = await receive(thief)
        assert refused["code"] == "permission_denied"
        await thief.wait_closed()
        assert thief.close_code == 1008

    async with connect(edge_b.ws_url, subprotocols=keyed("key-a"), compression=None) as again:
        last = {
            "conversation_id": conversation_id,
            "turn_id": first["turn_id"],
            "sequence": first["sequence"],
        }
        await again.send(json.dumps({"type": "resume", **last}))
        started = await receive(again)
        assert started["resumed"] is True and started["conversation_id"] == conversation_id
        audio = bytearray()
        completed = await rest_of_turn(again, audio, first["sequence"])
        assert completed["reason"] == "stop" and completed["turn_id"] == first["turn_id"]
        assert hashlib.sha256(audio).hexdigest() == expected("audio_no_finish_reason")["audio_sha256"]
        assert len(upstream.requests) == 1  # the answer was not asked for again
        await again.send(json.dumps({"type": "text", "text": "And for a small flat?"}))
        assert (await receive(again))["type"] == "turn.started"
    roles = [message["role"] for message in upstream.requests[-1]["messages"]]
    assert roles == ["user", "assistant", "user"]  # the next answer is asked with what was heard
    assert upstream.requests[-1]["model"] == PAUSE


async def test_redis_stopped_mid_conversation_carries_on_unresumable(
    start_edge: StartEdge,
    core: RunningService,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    edge_a, edge_b = await two_edges(start_edge, core)
    ws, conversation_id = await open_on(edge_a, FAST)
    redis_server.stop()
    # AUDIOCHAT_REDIS_UNAVAILABLE=continue (the default): the answer comes, only resume is lost.
    await ws.send(json.dumps({"type": "text", "text": "hello"}))
    assert (await rest_of_turn(ws, bytearray(), (await receive(ws))["sequence"]))["reason"] == "stop"
    await ws.close()
    async with connect(edge_b.ws_url) as again:
        await again.send(json.dumps({"type": "resume", "conversation_id": conversation_id}))
        refused = await receive(again)
        assert refused["code"] == "unavailable" and "conversation store" in refused["message"]
        await again.wait_closed()
        assert again.close_code == 1013
    # A new conversation still starts, and says it cannot be resumed.
    async with connect(edge_b.ws_url) as fresh:
        await fresh.send(json.dumps({"type": "config", "model": FAST}))
        started = await receive(fresh)
        assert started["type"] == "conversation.started" and started["resumable"] is False


async def test_redis_stopped_with_fail_refuses_turns_until_it_is_back(
    start_edge: StartEdge,
    start_service: StartService,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    core = await start_service(
        redis_url=redis_server.url, redis_timeout_seconds=QUICK_REDIS, redis_unavailable="fail"
    )
    edge = await start_edge(core)
    ws, _ = await open_on(edge, FAST)
    redis_server.stop()
    try:
        await ws.send(json.dumps({"type": "text", "text": "hello"}))
        refused = await receive(ws)
        assert refused["type"] == "turn.completed" and refused["reason"] == "error"
        assert refused["error"]["code"] == "unavailable" and refused["error"]["retryable"] is True
        async with connect(edge.ws_url) as fresh:
            await fresh.send(json.dumps({"type": "config", "model": FAST}))
            assert (await receive(fresh))["code"] == "unavailable"
    finally:
        redis_server.start()
    await ws.send(json.dumps({"type": "text", "text": "hello again"}))
    again = await receive(ws)
    assert again["type"] == "turn.started", again
    assert (await rest_of_turn(ws, bytearray(), again["sequence"]))["reason"] == "stop"
    await ws.close()


async def test_the_core_running_the_answer_dies_and_the_resume_reports_it_cut(
    start_service: StartService,
    upstream: FixtureUpstream,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # Core A is a real `audiochat serve`, killed (SIGKILL) mid-answer; core B, in this process, takes over.
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.base_url,
        "AUDIOCHAT_UPSTREAM": "openai",
        "AUDIOCHAT_REDIS_URL": redis_server.url,
        "AUDIOCHAT_ROLE": "core",
    }
    with audiochat_serve(env=env) as serve_a:
        ready = await asyncio.to_thread(serve_a.wait_for, "audiochat ready")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ready['grpc_port']}") as channel:
            stub: Any = pb_grpc.AudioChatServiceStub(channel)
            call = stub.Converse(metadata=(("authorization", "Bearer k"),))
            config = pb.ConverseConfig(
                turn=pb.TurnConfig(model="pause/30/audio_no_finish_reason"), resume_grace_ms=10_000
            )
            await call.write(pb.ConverseRequest(config=config))
            conversation_id = (await call.read()).started.conversation_id
            await call.write(pb.ConverseRequest(text=pb.TextInput(text="hello")))
            first = (await call.read()).event
            assert first.HasField("started")
            serve_a.process.kill()
            await asyncio.to_thread(serve_a.process.wait)
    core_b = await start_service(redis_url=redis_server.url)
    call = core_b.stub.Converse(metadata=(("authorization", "Bearer k"),))
    resume = pb.ConverseResume(conversation_id=conversation_id, turn_id=first.turn_id, sequence=1)
    await call.write(pb.ConverseRequest(resume=resume))
    assert (await call.read()).started.resumed
    async with asyncio.timeout(LEASE_SECONDS + 5):  # found out once the dead core's lease runs out
        cut = (await call.read()).event
    assert (cut.turn_id, cut.sequence) == (first.turn_id, 2)
    assert cut.completed.reason == pb.FINISH_REASON_ERROR and cut.completed.error.message == CUT_GONE
    assert cut.completed.error.code == pb.ERROR_CODE_UNAVAILABLE and cut.completed.error.retryable
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="hello again")))
    assert (await call.read()).event.HasField("started")
    assert [m["role"] for m in upstream.requests[-1]["messages"]] == ["user"]  # nothing of the cut turn
    call.cancel()
