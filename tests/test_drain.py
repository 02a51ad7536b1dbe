"""SIGTERM on `audiochat serve` (role all): one grace for the whole process, the core refuses new calls at
once, and every stream still running when the grace ends is told why in its own protocol."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import datetime
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.server import SERVICE_NAME
from tests.events import text_request
from tests.processes import audiochat_serve

GRACE_SECONDS = 3.0
# About ten seconds of paced speech from the offline voice: still running when the grace ends.
LONG = " ".join(["Tell me everything about golden retrievers and their families"] * 3)


async def grpc_turn(stub: Any) -> Any:
    call = stub.StreamTurn(text_request("gpt-4o-audio-preview", LONG))
    assert (await call.read()).HasField("started")
    return call


async def grpc_outcome(call: Any) -> str:
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return "ended"


async def sse_outcome(client: httpx.AsyncClient, started: asyncio.Event) -> list[str]:
    lines = []
    async with client.stream("POST", "/v1/turns", json={"text": LONG}) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                lines.append(line.removeprefix("event: "))
                started.set()
            elif line.startswith("data: ") and lines and lines[-1] == "error":
                lines.append(json.loads(line.removeprefix("data: "))["error"]["code"])
    return lines


async def compat_outcome(client: httpx.AsyncClient, started: asyncio.Event) -> list[str]:
    body = {"model": "gpt-4o-audio-preview", "stream": True, "messages": [{"role": "user", "content": LONG}]}
    body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    data = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                started.set()
                payload = line.removeprefix("data: ")
                data.append(
                    payload if payload == "[DONE]" else "error" if "error" in json.loads(payload) else "chunk"
                )
    return data


async def websocket_outcome(url: str, started: asyncio.Event) -> int | None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "config"}))
        await ws.send(json.dumps({"type": "text", "text": LONG}))
        try:
            while True:
                frame = await ws.recv()
                if isinstance(frame, str) and json.loads(frame)["type"] == "turn.started":
                    started.set()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def test_sigterm_drains_in_one_grace_and_tells_every_cut_stream_why() -> None:
    env = {"AUDIOCHAT_DRAIN_SECONDS": str(GRACE_SECONDS), "AUDIOCHAT_OFFLINE_REALTIME_FACTOR": "1"}
    with audiochat_serve(env=env) as serve:
        ready = await asyncio.to_thread(serve.wait_for, "audiochat ready")
        base, grpc_target = f"http://127.0.0.1:{ready['http_port']}", f"127.0.0.1:{ready['grpc_port']}"
        async with (
            grpc.aio.insecure_channel(grpc_target) as channel,
            httpx.AsyncClient(base_url=base, timeout=30) as sse_client,
            httpx.AsyncClient(base_url=base, timeout=30) as compat_client,
        ):
            stub = pb_grpc.AudioChatServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            call = await grpc_turn(stub)
            starts = [asyncio.Event() for _ in range(3)]
            sse = asyncio.create_task(sse_outcome(sse_client, starts[0]))
            compat = asyncio.create_task(compat_outcome(compat_client, starts[1]))
            ws = asyncio.create_task(
                websocket_outcome(f"ws://127.0.0.1:{ready['http_port']}/v1/converse", starts[2])
            )
            await asyncio.wait_for(asyncio.gather(*(start.wait() for start in starts)), 30)

            serve.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(serve.wait_for, "draining")
            # At once: the core is NOT_SERVING and refuses new calls, while the edge drains beside it.
            check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            refused = stub.StreamTurn(text_request("gpt-4o-audio-preview", "Hi"))
            assert (
                await grpc_outcome(refused)
                == "UNAVAILABLE: the server is shutting down; retry on another instance"
            )

            grpc_end, sse_events, compat_data, ws_code = await asyncio.wait_for(
                asyncio.gather(grpc_outcome(call), sse, compat, ws), 30
            )
        exit_code = await asyncio.to_thread(serve.process.wait, 30)
        assert serve.process.stderr is not None
        rest = await asyncio.to_thread(serve.process.stderr.read)
    assert grpc_end.startswith("UNAVAILABLE: ") and "shutting down" in grpc_end
    assert sse_events[-2:] == ["error", "unavailable"]
    assert compat_data[-2:] == ["error", "[DONE]"]
    assert ws_code == 1012
    assert exit_code == 0
    lines = serve.log_lines + [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    at = {line["message"]: datetime.fromisoformat(line["time"]) for line in reversed(lines)}  # first of each
    drain_took = (at["stopped"] - at["draining"]).total_seconds()
    assert drain_took < 2 * GRACE_SECONDS, f"one grace, not two: {drain_took:.1f} s"
    logged = "\n".join(json.dumps(line) for line in serve.log_lines) + rest
    assert "Exception in ASGI application" not in logged and "Traceback" not in logged
