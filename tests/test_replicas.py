"""A deployment's shape in real processes: one core and two edges (`audiochat serve --role core|edge`),
sharing a real redis-server, the offline voice paced like a live model. Killing an edge pod mid-answer
costs a WebSocket client nothing but a reconnect to the other edge, and an SSE turn started on one edge is
resumed on the other byte-identical while it still streams.

The in-process tests (test_sse_redis.py, test_conversation_resume_edges.py) cover every branch; these
check that nothing they rely on is shared only because their edges share one process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.processes import ServeProcess, audiochat_serve
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.test_conversation_resume_edges import keyed, next_frame, receive, rest_of_turn

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "What should I pack for a weekend of hiking in the rain?"


@dataclass
class Deployment:
    core: ServeProcess
    edge_a: ServeProcess
    edge_b: ServeProcess
    url_a: str  # http://127.0.0.1:PORT
    url_b: str


@pytest.fixture(scope="module")
def deployment(redis_server: RedisServer) -> Iterator[Deployment]:  # noqa: F811
    env = {
        "AUDIOCHAT_REDIS_URL": redis_server.url,
        "AUDIOCHAT_OFFLINE_REALTIME_FACTOR": "1.0",  # answers take seconds: time to cut one
        "AUDIOCHAT_API_KEYS": KEY,
    }
    with audiochat_serve("--role", "core", env=env) as core:
        grpc_port = core.wait_for("gRPC service listening", timeout=60)["port"]
        target = ("--role", "edge", "--target", f"127.0.0.1:{grpc_port}")
        with audiochat_serve(*target, env=env) as edge_a, audiochat_serve(*target, env=env) as edge_b:
            port_a = edge_a.wait_for("edge listening", timeout=60)["port"]
            port_b = edge_b.wait_for("edge listening", timeout=60)["port"]
            assert edge_a.log_lines[-1]["resume_store"] == "redis"
            yield Deployment(core, edge_a, edge_b, f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}")


def events(stream: bytes) -> list[bytes]:
    """The SSE events of a stream, without keep-alive comments (each pod sends its own)."""
    blocks = [block for block in stream.split(b"\n\n") if block]
    return [block for block in blocks if not all(line.startswith(b":") for line in block.split(b"\n"))]


async def test_an_sse_turn_resumes_on_the_other_edge_byte_identical(deployment: Deployment) -> None:
    head = bytearray()
    async with (
        httpx.AsyncClient(base_url=deployment.url_a, headers=AUTH, timeout=30) as client,
        client.stream("POST", "/v1/turns", json={"text": QUESTION}) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            head += chunk
            if head.count(b"event: audio.delta") >= 2:
                break  # the client drops with the answer still streaming on edge A
    seen = events(bytes(head[: head.rfind(b"\n\n") + 2]))
    last_id = next(line for line in seen[-1].split(b"\n") if line.startswith(b"id: "))[4:].decode()
    turn_id = last_id.rpartition(":")[0]
    async with httpx.AsyncClient(base_url=deployment.url_b, headers=AUTH, timeout=30) as client:
        path = f"/v1/turns/{turn_id}/events"
        rest = await client.get(path, headers={"Last-Event-ID": last_id})  # follows edge A live
        assert rest.status_code == 200
        whole = await client.get(path, headers={"Last-Event-ID": f"{turn_id}:0"})  # after it ended
    assert b"event: turn.completed" in rest.content
    assert seen + events(rest.content) == events(whole.content)


async def answer_audio(ws: ClientConnection) -> tuple[bytearray, dict[str, Any]]:
    """Frames of one answer from its start: its audio and turn.completed."""
    started = await receive(ws)
    assert started["type"] == "turn.started"
    audio = bytearray()
    return audio, await rest_of_turn(ws, audio, started["sequence"])


async def test_an_edge_killed_mid_answer_costs_a_websocket_client_only_a_reconnect(
    deployment: Deployment,
) -> None:
    ws = await connect(deployment.url_a.replace("http", "ws") + "/v1/converse", subprotocols=keyed(KEY))
    await ws.send(json.dumps({"type": "config", "resume_grace_ms": 10_000}))
    conversation_id = (await receive(ws))["conversation_id"]
    await ws.send(json.dumps({"type": "text", "text": QUESTION}))
    started = await receive(ws)
    assert started["type"] == "turn.started"
    audio, sequence = bytearray(), started["sequence"]
    while len(audio) < 24_000:  # half a second of the answer heard on edge A
        sequence, _ = await next_frame(ws, audio)
    deployment.edge_a.process.kill()  # the pod is gone, no close handshake
    deployment.edge_a.process.wait()
    ws.transport.abort()

    url_b = deployment.url_b.replace("http", "ws") + "/v1/converse"
    async with connect(url_b, subprotocols=keyed(KEY)) as again:
        resume = {"conversation_id": conversation_id, "turn_id": started["turn_id"], "sequence": sequence}
        await again.send(json.dumps({"type": "resume", **resume}))
        assert (await receive(again))["resumed"] is True
        completed = await rest_of_turn(again, audio, sequence)
        assert completed["reason"] == "stop" and completed["turn_id"] == started["turn_id"]
        await again.send(json.dumps({"type": "text", "text": "Thanks."}))
        _, next_completed = await answer_audio(again)
        assert next_completed["reason"] == "stop"  # the conversation goes on from edge B
    # What the client heard across both edges is the whole answer, as an unbroken conversation hears it.
    async with connect(url_b, subprotocols=keyed(KEY)) as fresh:
        await fresh.send(json.dumps({"type": "config"}))
        await receive(fresh)
        await fresh.send(json.dumps({"type": "text", "text": QUESTION}))
        whole, _ = await answer_audio(fresh)
    assert len(audio) > 24_000 and audio == whole
