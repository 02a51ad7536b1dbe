"""A fault-injecting OpenAI-compatible upstream: the fixture server plus every way an upstream goes wrong.

Real HTTP (uvicorn), the real wire format where there is one. The request's `model` picks the fault,
on top of the fixture server's models (`fixture/`, `slow/`, `stall/`, `fresh/`, `status/`... in
tests/upstream_server.py):

- `script/NAME`: the raw bytes registered in `scripts[NAME]`, sent as written (malformed JSON, base64,
  types; cut frames; no `[DONE]`);
- `hang`: accepts the request and never sends the response headers;
- `silent/N/NAME`: the first N events of capture NAME, then nothing at all until the client leaves;
- `reset/N/NAME`: the first N events, then the connection is dropped in the middle of the body;
- `retry/SECONDS`: 429 `rate_limit_exceeded` with `retry-after: SECONDS`;
- `long/SECONDS`: a spoken answer with SECONDS of audio in 100 ms pieces, written as fast as it is read
  (so a reader that stops back-pressures this server); its pcm16 is `pattern_pcm`, so a client can check
  that no byte was lost or reordered;
- `big/BYTES`: a spoken answer whose audio is a single piece of BYTES bytes of `pattern_pcm`.

Every stream is counted while its HTTP request is open (`open_streams`), and the moment the gateway
closed each one is kept (`closed_at`), so a test can assert that nothing upstream is left running. A
`long/` answer the gateway hung up on before its end is also kept by the text of the request's last
message (`hung_up_at`), so a client that tags its input can time its own cancel to the upstream's close.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from service.offline import wire
from tests.upstream_server import FixtureUpstream, Receive, Send, fixture_events, respond, wait_disconnect

PIECE_MS = 100
SAMPLE_RATE_HZ = 24_000
_PATTERN = bytes(range(256)) * 2  # sample k holds bytes (2k mod 256, 2k+1 mod 256): a shift shows


def pattern_pcm(size: int, offset: int = 0) -> bytes:
    """`size` bytes of the test pattern from byte `offset` on: any loss or reordering changes it."""
    start = offset % 256
    repeats = (start + size) // len(_PATTERN) + 1
    return (_PATTERN * repeats)[start : start + size] if size > 0 else b""


def spoken_answer(seconds: float, piece_bytes: int) -> Iterator[bytes]:
    """SSE events of a spoken answer of `seconds` of `pattern_pcm` audio in pieces of `piece_bytes`.

    Built as they are sent, so the headers go out at once and a long answer costs no time up front.
    """
    ident = wire.StreamIdentity.new("fault-upstream")
    audio_id = wire.new_audio_id()
    total = int(seconds * SAMPLE_RATE_HZ) * 2
    chunks: list[dict[str, Any]] = list(wire.audio_head_chunks(ident, audio_id, "a long answer"))
    pieces = (pattern_pcm(min(piece_bytes, total - at), at) for at in range(0, total, piece_bytes))
    usage = wire.usage_dict(5, 0, 3, total // 2 // 600 + 1)
    tail = wire.audio_tail_chunks(ident, audio_id, pieces, int(time.time()) + 3600, usage)
    for chunk in itertools.chain(chunks, tail):
        yield wire.sse_event(chunk)
    yield wire.SSE_DONE


class FaultUpstream(FixtureUpstream):
    """The fixture upstream plus scripted faults; start with `async with`."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, bytes] = {}
        self.open_streams = 0
        self.bytes_sent = 0  # body bytes handed to uvicorn by the fault streams, for back-pressure tests
        self.closed_at: list[float] = []  # time.monotonic() when each request ended
        self.hung_up_at: dict[str, float] = {}  # last message's text -> when the gateway hung up mid-answer
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.open_streams += 1
        self._idle.clear()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.open_streams -= 1
            self.closed_at.append(time.monotonic())
            if self.open_streams == 0:
                self._idle.set()

    async def idle(self) -> None:
        """Wait until no request is open (every stream the gateway opened is closed)."""
        await self._idle.wait()

    async def other(
        self, kind: str, rest: str, request: dict[str, Any], send: Send, receive: Receive
    ) -> None:
        """The faults; see the module docstring."""
        if kind == "script":
            await self._send_events(send, receive, [self.scripts[rest]])
        elif kind == "hang":
            await wait_disconnect(receive)
        elif kind in ("silent", "reset"):
            count, _, name = rest.partition("/")
            events = fixture_events(name)[: int(count)]
            await self._send_events(send, receive, events, end=False)
            if kind == "silent":
                await wait_disconnect(receive)
            else:
                raise ConnectionResetError("scripted reset in the middle of the body")
        elif kind == "retry":
            error = wire.error_object("scripted rate limit", "requests", None, "rate_limit_exceeded")
            await respond(send, 429, error, [(b"retry-after", rest.encode())])
        elif kind == "long":
            piece_bytes = SAMPLE_RATE_HZ * 2 * PIECE_MS // 1000
            answer = spoken_answer(float(rest), piece_bytes)
            await self._send_events(send, receive, answer, tag=last_text(request))
        elif kind == "big":
            await self._send_events(send, receive, spoken_answer(int(rest) / 2 / SAMPLE_RATE_HZ, int(rest)))
        else:
            await super().other(kind, rest, request, send, receive)

    async def _send_events(
        self, send: Send, receive: Receive, events: Iterable[bytes], end: bool = True, tag: str = ""
    ) -> None:
        self.streams_started += 1
        headers = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req_fault")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.create_task(wait_disconnect(receive))
        if tag:
            disconnected.add_done_callback(lambda task: self._hung_up(task, tag))
        try:
            for event in events:
                if disconnected.done():
                    break
                # uvicorn's send waits while the socket's buffer is full: a stopped reader stops this loop.
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self.bytes_sent += len(event)
            if end and not disconnected.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if disconnected.done():
                self.closed_by_client += 1
                self.client_closed.set()
            else:
                disconnected.cancel()  # a silent stream goes on waiting for the disconnect itself

    def _hung_up(self, task: asyncio.Task[None], tag: str) -> None:
        if not task.cancelled():
            self.hung_up_at[tag] = time.monotonic()


def last_text(request: dict[str, Any]) -> str:
    """The text of a Chat Completions request's last message (a string, or its text parts joined)."""
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def script(*chunks: object, done: bool = True) -> bytes:
    """SSE bytes of these chunks (bytes are sent as the data line's raw payload), then `[DONE]`."""
    parts = [
        b"data: " + (chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()) + b"\n\n"
        for chunk in chunks
    ]
    return b"".join(parts) + (wire.SSE_DONE if done else b"")
