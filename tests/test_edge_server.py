"""The edge as a server: health, readiness, metrics, drain, and the `serve --role` / `edge` processes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import openai
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.audio import parse_wav, wrap_pcm16_as_wav
from tests.conftest import StartService
from tests.edge_fixtures import RunningEdge, StartEdge, sdk_audio
from tests.processes import AUDIOCHAT, REPO, audiochat_serve, offline_environment


async def test_health_readiness_and_metrics(edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
        metrics = await client.get("/metrics")
        missing = await client.get("/v2/nothing")
        await edge.service.server.stop()
        not_ready = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200, "alive, only not ready"
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain; version=")
    # Role all: the process's and the core's families are on the core's metrics port, not repeated here.
    assert b"audiochat_edge_relay_added_seconds_count" in metrics.content
    assert b"python_info" not in metrics.content and b"audiochat_turns_total" not in metrics.content
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert not_ready.status_code == 503


async def test_drain_finishes_running_streams_and_refuses_new_work(
    start_edge: StartEdge, start_service: StartService
) -> None:
    edge = await start_edge(await start_service(), heartbeat_seconds=0.02)
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        running = client.stream(
            "POST", "/v1/turns", json={"text": "Hi", "model": "slow/audio_no_finish_reason"}
        )
        response = await running.__aenter__()
        ws = await connect(edge.ws_url)
        await ws.send(json.dumps({"type": "config", "model": "slow/text_only"}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "Hi"}))
        frames = [await ws.recv()]  # the answer runs
        stopping = asyncio.create_task(edge.server.stop())
        await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).status_code == 503
        refused = await client.post("/v1/turns", json={"text": "Hi", "model": "fixture/text_only"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        await running.__aexit__(None, None, None)
    assert b"event: turn.completed" in body and b"event: error" not in body
    try:
        while True:
            frames.append(await ws.recv())
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
    types = [json.loads(frame)["type"] for frame in frames if isinstance(frame, str)]
    assert "turn.completed" in types and types[-1] == "error"
    assert code == 1012, "the answer ends, then the client is asked to reconnect elsewhere"
    await asyncio.wait_for(stopping, 10)


def _port(line: dict[str, object]) -> int:
    port = line["port"]
    assert isinstance(port, int)
    return port


async def test_serve_runs_the_edge_beside_the_core_and_curl_sees_events(tmp_path: Path) -> None:
    with audiochat_serve() as serve:
        port = _port(await asyncio.to_thread(serve.wait_for, "edge listening"))
        await asyncio.to_thread(serve.wait_for, "audiochat ready")
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            response = await client.post("/v1/turns", json={"text": "Hello there."})
            assert (await client.get("/readyz")).status_code == 200
        assert response.status_code == 200
        assert b"event: audio.delta" in response.content and b"event: turn.completed" in response.content
        # The Python example: pcm16 deltas from a stream, saved as a WAV.
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-any", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="gpt-4o-audio-preview",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            messages=[{"role": "user", "content": "Is a golden retriever a good family dog?"}],
            stream=True,
        )
        pcm = bytearray()
        async for chunk in stream:
            if chunk.choices:
                pcm += base64.b64decode(sdk_audio(chunk.choices[0].delta).get("data") or "")
        await sdk.close()
        wav = tmp_path / "answer.wav"
        wav.write_bytes(wrap_pcm16_as_wav(bytes(pcm)))
        assert parse_wav(wav.read_bytes()).duration_seconds > 0.5
        assert serve.stop() == 0


async def test_role_core_has_no_edge_and_edge_runs_alone_against_it() -> None:
    with audiochat_serve("--role", "core") as core:
        grpc_port = _port(await asyncio.to_thread(core.wait_for, "gRPC service listening"))
        await asyncio.to_thread(core.wait_for, "audiochat ready")
        assert not any(line["message"] == "edge listening" for line in core.log_lines)
        edge_env = {**offline_environment(), "AUDIOCHAT_HTTP_PORT": "0", "AUDIOCHAT_API_KEYS": "k"}
        edge = await asyncio.create_subprocess_exec(
            *AUDIOCHAT, "edge", "--target", f"127.0.0.1:{grpc_port}", "--bind", "127.0.0.1",
            env=edge_env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert edge.stderr is not None
            port = 0
            while not port:
                line = json.loads(await asyncio.wait_for(edge.stderr.readline(), 30))
                port = line["port"] if line["message"] == "edge listening" else 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert (await client.get("/readyz")).status_code == 200
                refused = await client.post("/v1/turns", json={"text": "Hi"})
                answer = await client.post(
                    "/v1/turns", json={"text": "Hi"}, headers={"Authorization": "Bearer k"}
                )
            assert refused.status_code == 401
            assert b"event: turn.completed" in answer.content
        finally:
            edge.terminate()
            assert await asyncio.wait_for(edge.wait(), 30) == 0
        assert core.stop() == 0
