"""A lean HTTP/1.1 SSE reader: the load side's client for every HTTP row (direct, relay, edge, LiteLLM).

The load generator shares one core with the simulator, so its client must cost far less than what it
measures, or its own queueing ends up in every latency. A general HTTP client (httpx, the openai SDK)
costs several times a gRPC client per event; this one is an asyncio.Protocol on a keep-alive connection
that sends a prebuilt request and, per server-sent event, runs one regex: the base64 audio is the only
thing decoded (the stamp lives inside it), and JSON is parsed only for the event that ends a turn.

It speaks what the servers measured here send: a chunked (or length-delimited) body of `\\n`-separated
server-sent events. Anything else is an error counted by the load generator, never a silent pass.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from benchmarks.clients import QUESTION
from benchmarks.edge_clients import check_reason
from benchmarks.load import Session, TurnError, TurnProbe

AUDIO_DATA = re.compile(rb'"data":\s*"([A-Za-z0-9+/=]+)"')
HEAD_LIMIT_BYTES = 64 * 1024
TIMEOUT_SECONDS = 30.0

# Called with (event name, or b"" when the stream names none; data) per event; raises TurnError to stop.
EventHandler = Callable[[bytes, bytes], None]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time; calls `handler` per server-sent event."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._events = bytearray()  # de-chunked body bytes not yet cut into events
        self._handler: EventHandler | None = None
        self._done: asyncio.Future[None] | None = None
        self._status = 0
        self._chunked = False
        self._remaining = -1  # body bytes still expected when length-delimited; -1 = until close
        self._in_body = False
        self._chunk_left = 0  # bytes of the current chunk still to read (data only, without its CRLF)
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        if self._done is not None and not self._done.done():
            if self._in_body and not self._chunked and self._remaining < 0:
                self._flush_events()
                self._done.set_result(None)  # a body delimited by the connection's end
            else:
                self._done.set_exception(TurnError("connection closed mid-answer"))

    def start(self, request: bytes, handler: EventHandler) -> asyncio.Future[None]:
        """Send `request`; the future completes when its response body has ended."""
        assert self.transport is not None
        self._handler = handler
        self._done = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._events.clear()
        self._in_body = False
        self.reusable = False
        self.transport.write(request)
        return self._done

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            return
        self._buffer += data
        try:
            if not self._in_body and not self._read_head():
                return
            self._read_body()
        except TurnError as exc:
            self._done.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > HEAD_LIMIT_BYTES:
                raise TurnError("response head too large")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").lower().split("\r\n")
        del self._buffer[: end + 4]
        parts = head[0].split(" ", 2)
        self._status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = dict(line.partition(":")[::2] for line in head[1:])
        headers = {key.strip(): value.strip() for key, value in headers.items()}
        self._chunked = "chunked" in headers.get("transfer-encoding", "")
        self._remaining = int(headers.get("content-length", -1)) if not self._chunked else -1
        self.reusable = headers.get("connection") != "close"
        self._chunk_left = 0
        self._in_body = True
        return True

    def _read_body(self) -> None:
        buffer = self._buffer
        if not self._chunked:
            take = len(buffer) if self._remaining < 0 else min(len(buffer), self._remaining)
            self._events += buffer[:take]
            del buffer[:take]
            if self._remaining >= 0:
                self._remaining -= take
            self._flush_events()
            if self._remaining == 0:
                self._end()
            return
        while True:
            if self._chunk_left:
                take = min(len(buffer), self._chunk_left)
                self._events += buffer[:take]
                del buffer[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    break
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            if line_end == 0:  # the CRLF that closes the previous chunk's data
                del buffer[:2]
                continue
            size = int(bytes(buffer[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                if buffer.find(b"\r\n\r\n", line_end) < 0:
                    break  # wait for the empty trailer
                buffer.clear()
                self._flush_events()
                self._end()
                return
            del buffer[: line_end + 2]
            self._chunk_left = size
        self._flush_events()

    def _flush_events(self) -> None:
        events = self._events
        handler = self._handler
        assert handler is not None
        start = 0
        while (end := events.find(b"\n\n", start)) >= 0:
            block = bytes(events[start:end])
            start = end + 2
            name = b""
            data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data = line[6:] if line[5:6] == b" " else line[5:]
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            if self._status == 200 and (data or name):
                handler(name, data)
        del events[:start]

    def _end(self) -> None:
        self._in_body = False
        assert self._done is not None
        if self._status != 200:
            self._done.set_exception(TurnError(f"http {self._status}"))
        else:
            self._done.set_result(None)


class RawSSEClient:
    """A session's connection to one base URL, reopened when the server closed it."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path.rstrip("/")
        self._connection: _Connection | None = None

    def request_bytes(self, path: str, body: bytes, api_key: str = "sk-bench") -> bytes:
        """A prebuilt POST of a JSON body to `path` under the base URL."""
        return (
            f"POST {self.path}{path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"authorization: Bearer {api_key}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def exchange(self, request: bytes, handler: EventHandler) -> None:
        """Send one request and feed its events to `handler` until its body ends."""
        connection = self._connection
        if connection is None or connection.transport is None or not connection.reusable:
            if connection is not None and connection.transport is not None:
                connection.transport.close()
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._connection = connection
        connection.reusable = True
        done = connection.start(request, handler)
        try:
            await asyncio.wait_for(done, TIMEOUT_SECONDS)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection (a turn left mid-answer cannot be reused)."""
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
        self._connection = None


def chat_body(model: str = "gpt-4o-audio-preview", question: str = QUESTION) -> bytes:
    """What the gateway itself sends upstream for a one-line text turn: the OpenAI rows ask the same."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


class RawChatCompletions:
    """`POST /chat/completions` streamed, read as bytes: the direct, relay, compat and LiteLLM rows."""

    def __init__(self, name: str, base_url: str, api_key: str = "sk-bench") -> None:
        self.name = name
        self._base_url = base_url
        self._api_key = api_key

    def session(self) -> Session:
        return _ChatSession(RawSSEClient(self._base_url), self._api_key)

    async def close(self) -> None:
        pass


class _ChatSession:
    def __init__(self, client: RawSSEClient, api_key: str) -> None:
        self._client = client
        self._request = client.request_bytes("/chat/completions", chat_body(), api_key)

    async def turn(self, probe: TurnProbe) -> None:
        done = False

        def on_event(name: bytes, data: bytes) -> None:
            nonlocal done
            if data == b"[DONE]":
                done = True
            elif data.startswith(b'{"error"'):
                raise TurnError("error frame")
            elif (match := AUDIO_DATA.search(data)) is not None:
                probe.audio(binascii.a2b_base64(match[1]))
            else:
                probe.other()

        await self._client.exchange(self._request, on_event)
        if not done:
            raise TurnError("no [DONE]")

    async def close(self) -> None:
        self._client.close()


class RawEdgeSSE:
    """The edge's `POST /v1/turns`: named events, audio as base64 in `audio.delta`."""

    name = "sse"

    def __init__(self, base_url: str, question: str) -> None:
        self._base_url = base_url
        self._body = json.dumps({"text": question, "modalities": ["text", "audio"]}).encode()

    def session(self) -> Session:
        return _EdgeSSESession(RawSSEClient(self._base_url), self._body)

    async def close(self) -> None:
        pass


class _EdgeSSESession:
    def __init__(self, client: RawSSEClient, body: bytes) -> None:
        self._client = client
        self._request = client.request_bytes("/v1/turns", body)

    async def turn(self, probe: TurnProbe) -> None:
        completed: dict[str, Any] = {}

        def on_event(name: bytes, data: bytes) -> None:
            if name == b"audio.delta":
                match = AUDIO_DATA.search(data)
                if match is None:
                    raise TurnError("audio.delta without data")
                probe.audio(binascii.a2b_base64(match[1]))
                return
            probe.other()
            if name == b"turn.completed":
                completed.update(json.loads(data))
            elif name == b"error":
                raise TurnError("sse error event")

        await self._client.exchange(self._request, on_event)
        if not completed:
            raise TurnError("no turn.completed")
        check_reason(completed)

    async def close(self) -> None:
        self._client.close()
