"""The edge's WebSocket client (`/v1/converse`), following `adapters/PROTOCOL.md` the plain way an app would.

The edge's HTTP rows (SSE `POST /v1/turns`, `POST /v1/chat/completions`) use the lean reader in `raw_http`.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from benchmarks.clients import QUESTION
from benchmarks.load import Session, TurnError, TurnProbe

WS_SUBPROTOCOL = "audiochat.v1"
WS_AUDIO_HEADER_BYTES = 16  # turn_index, sequence, start_sample


def check_reason(completed: dict[str, Any]) -> None:
    """Raise TurnError unless a `turn.completed` says the answer ended normally."""
    reason = completed.get("reason")
    if reason != "stop":
        code = (completed.get("error") or {}).get("code", "")
        raise TurnError(f"{reason}/{code}" if code else str(reason))


class EdgeWebSocket:
    """`/v1/converse`: one socket per user, one `text` message per turn, audio as binary frames."""

    name = "websocket"

    def __init__(self, http_url: str) -> None:
        self._url = http_url.replace("http://", "ws://", 1) + "/v1/converse"

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
                check_reason(message)
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
