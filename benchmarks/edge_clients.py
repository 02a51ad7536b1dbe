"""Clients of the HTTP edge: SSE `POST /v1/turns`, WebSocket `/v1/converse`, `POST /v1/chat/completions`.

Each follows `adapters/PROTOCOL.md` the plain way an app would. They run only once the edge has landed in
git; until then the benchmark skips them and says why.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from benchmarks.clients import QUESTION, OpenAIDirect
from benchmarks.load import Session, Transport, TurnError, TurnProbe
from benchmarks.processes import REPO, Gateway

WS_SUBPROTOCOL = "audiochat.v1"
WS_AUDIO_HEADER_BYTES = 16  # turn_index, sequence, start_sample
TIMEOUT_SECONDS = 30.0


def _http_port(gateway: Gateway | None) -> int:
    assert gateway is not None and gateway.http_port, "the gateway was started without its edge"
    return gateway.http_port


class EdgeSSE:
    """`POST /v1/turns`: one request per turn, events as SSE with base64 audio."""

    name = "sse"

    def __init__(self, port: int, streams: int) -> None:
        # One connection per user, kept alive between turns, as a mobile app would.
        limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=TIMEOUT_SECONDS
        )
        self._body = {"text": QUESTION, "modalities": ["text", "audio"]}

    def session(self) -> Session:
        return _SSESession(self._client, self._body)

    async def close(self) -> None:
        await self._client.aclose()


class _SSESession:
    def __init__(self, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        self._client = client
        self._body = body

    async def turn(self, probe: TurnProbe) -> None:
        async with self._client.stream("POST", "/v1/turns", json=self._body) as response:
            if response.status_code != 200:
                raise TurnError(f"http {response.status_code}")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif not line.startswith("data: "):
                    continue
                elif event == "audio.delta":
                    probe.audio(base64.b64decode(json.loads(line[6:])["data"]))
                else:
                    probe.other()
                    if event == "turn.completed":
                        _check_reason(json.loads(line[6:]))
                        return
                    if event == "error":
                        raise TurnError("sse error event")
        raise TurnError("no turn.completed")

    async def close(self) -> None:
        pass


def _check_reason(completed: dict[str, Any]) -> None:
    reason = completed.get("reason")
    if reason != "stop":
        code = (completed.get("error") or {}).get("code", "")
        raise TurnError(f"{reason}/{code}" if code else str(reason))


class EdgeWebSocket:
    """`/v1/converse`: one socket per user, one `text` message per turn, audio as binary frames."""

    name = "websocket"

    def __init__(self, port: int) -> None:
        self._url = f"ws://127.0.0.1:{port}/v1/converse"

    def session(self) -> Session:
        return _WebSocketSession(self._url)

    async def close(self) -> None:
        pass


class _WebSocketSession:
    def __init__(self, url: str) -> None:
        self._url = url
        self._socket: ClientConnection | None = None

    async def _open(self) -> ClientConnection:
        socket = await connect(self._url, subprotocols=[WS_SUBPROTOCOL], compression=None)  # type: ignore[list-item]
        await socket.send(json.dumps({"type": "config", "modalities": ["text", "audio"]}))
        started = json.loads(await socket.recv())
        if started.get("type") != "conversation.started":
            raise TurnError(f"ws {started.get('type')}")
        return socket

    async def turn(self, probe: TurnProbe) -> None:
        if self._socket is None:
            self._socket = await self._open()
        socket = self._socket
        await socket.send(json.dumps({"type": "text", "text": QUESTION}))
        async for frame in socket:
            if isinstance(frame, bytes):
                probe.audio(frame[WS_AUDIO_HEADER_BYTES:])
                continue
            probe.other()
            message = json.loads(frame)
            kind = message.get("type")
            if kind == "turn.completed":
                _check_reason(message)
                return
            if kind == "error":
                self._socket = None
                raise TurnError(f"ws error {message.get('code')}")
        self._socket = None
        raise TurnError("ws closed mid-turn")

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None


class EdgeCompatible(OpenAIDirect):
    """`POST /v1/chat/completions` on the edge: the baseline's own client, only its base_url changed."""

    name = "openai-compatible"


EdgeFactory = Callable[[str, int, Gateway | None], Transport]
EDGE_TRANSPORTS: dict[str, EdgeFactory] = {
    "sse": lambda sim_url, n, gateway: EdgeSSE(_http_port(gateway), n),
    "websocket": lambda sim_url, n, gateway: EdgeWebSocket(_http_port(gateway)),
    "openai-compatible": lambda sim_url, n, gateway: EdgeCompatible(
        f"http://127.0.0.1:{_http_port(gateway)}/v1"
    ),
}


def edge_available() -> tuple[bool, str]:
    """Whether the edge is committed (clients follow its committed protocol); if not, why not."""
    try:
        landed = subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", "adapters/edge_server.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        landed = ""
    if not landed:
        return False, "the edge (adapters/) has not landed in git yet"
    return True, ""
