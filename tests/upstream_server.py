"""A local OpenAI-compatible server for tests: real HTTP (uvicorn), the real wire format.

The request's `model` picks the behaviour, so a test reads as what it asks for:
- `fixture/NAME`: the capture tests/fixtures/upstream/NAME.sse, byte for byte, in uneven network writes;
- `slow/NAME`: the same capture, one event every `SLOW_EVENT_SECONDS`, so a test can cancel mid-answer;
- `fresh/NAME`: the same capture as if recorded now: its `expires_at` is an hour from now;
- `stall/SECONDS/NAME`: the capture's first event, then silence for SECONDS, then the rest;
- `pause/SECONDS/NAME`: the capture's first event, then silence for SECONDS, then the rest at once;
- `status/CODE/ERROR_CODE`: an HTTP error in OpenAI's shape (429 carries `retry-after-ms: 1500`);
- `toolcall/NAME`: the `tool_call` capture, or, once the last message is a tool result, the capture NAME
  (a model that calls a tool, then speaks about its result).
Every request body is recorded, and so is each stream the client closed before the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Self

from service.embedded_http import EmbeddedHTTPServer

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
SLOW_EVENT_SECONDS = 0.05
WRITE_SIZES = (1, 7, 300, 4096, 65536)  # uneven writes: events and base64 split across network reads

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def fixture_events(name: str) -> list[bytes]:
    """The events of a capture, each with its blank-line terminator."""
    body = (FIXTURES / f"{name}.sse").read_bytes()
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


class FixtureUpstream:
    """Serves captures and scripted failures on 127.0.0.1; start with `async with`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.raw_requests: list[bytes] = []  # the same bodies as sent, to check values as written
        self.closed_by_client = 0
        self.client_closed = asyncio.Event()
        self.streams_started = 0
        self.models: list[str] | None = None  # GET /models answers these ids; None answers 404
        self.fail_next: list[str] = []  # "STATUS/CODE" answers for the next requests, whatever their model
        # (status, body, headers) answers for the next requests, whatever their model
        self.error_next: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self._http = EmbeddedHTTPServer(self)
        self.base_url = ""

    async def __aenter__(self) -> Self:
        port = await self._http.start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"].endswith("/models"):
            await self._models(send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        self.requests.append(request)
        self.raw_requests.append(body)
        if self.error_next:
            status, error_body, error_headers = self.error_next.pop(0)
            headers = [(name.encode(), value.encode()) for name, value in error_headers.items()]
            await respond(send, status, error_body, headers)
            return
        model = f"status/{self.fail_next.pop(0)}" if self.fail_next else str(request.get("model", ""))
        kind, _, rest = model.partition("/")
        if kind == "status":
            await self._error(send, rest)
        elif kind in ("fixture", "slow"):
            await self._stream(send, receive, fixture_events(rest), slow=kind == "slow")
        elif kind == "stall":
            seconds, _, name = rest.partition("/")
            await self._stream(send, receive, fixture_events(name), slow=True, stall=float(seconds))
        elif kind == "pause":
            seconds, _, name = rest.partition("/")
            await self._stream(send, receive, fixture_events(name), slow=True, stall=float(seconds), pace=0.0)
        elif kind == "toolcall":
            messages = request.get("messages") or [{}]
            answer = rest if messages[-1].get("role") == "tool" else "tool_call"
            await self._stream(send, receive, fixture_events(answer), slow=False)
        elif kind == "fresh":
            await self._stream(send, receive, [_refresh(event) for event in fixture_events(rest)], slow=False)
        else:
            await self.other(kind, rest, request, send, receive)

    async def _models(self, send: Send) -> None:
        if self.error_next:
            status, error_body, error_headers = self.error_next.pop(0)
            await respond(
                send, status, error_body, [(k.encode(), v.encode()) for k, v in error_headers.items()]
            )
        elif self.models is None:
            await respond(send, 404, {"error": {"message": "Not found", "type": "invalid_request_error"}})
        else:
            data = [
                {"id": i, "object": "model", "created": 1, "owned_by": "upstream-org"} for i in self.models
            ]
            await respond(send, 200, {"object": "list", "data": data})

    async def other(
        self, kind: str, rest: str, request: dict[str, Any], send: Send, receive: Receive
    ) -> None:
        """A model this server does not know: 404 (subclasses add behaviours)."""
        await respond(send, 404, {"error": {"message": f"no such model {request.get('model')}"}})

    async def _error(self, send: Send, rest: str) -> None:
        status, _, code = rest.partition("/")
        headers = [(b"retry-after-ms", b"1500")] if status == "429" else []
        error = {"message": f"scripted {status}", "type": "scripted", "param": None, "code": code or None}
        await respond(send, int(status), {"error": error}, headers)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        events: list[bytes],
        *,
        slow: bool,
        stall: float = 0.0,
        pace: float = SLOW_EVENT_SECONDS,
    ) -> None:
        self.streams_started += 1
        headers = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req_fixture")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.create_task(wait_disconnect(receive))
        try:
            if slow:
                for index, event in enumerate(events):
                    if disconnected.done():
                        break
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    pause = stall if index == 0 and stall else pace
                    await asyncio.wait([disconnected], timeout=pause)
            else:
                body = b"".join(events)
                offset, index = 0, 0
                while offset < len(body):
                    size = WRITE_SIZES[index % len(WRITE_SIZES)]
                    await send(
                        {
                            "type": "http.response.body",
                            "body": body[offset : offset + size],
                            "more_body": True,
                        }
                    )
                    offset, index = offset + size, index + 1
            if not disconnected.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            if disconnected.done():
                self.closed_by_client += 1
                self.client_closed.set()
            else:
                disconnected.cancel()


def _refresh(event: bytes) -> bytes:
    return re.sub(rb'"expires_at":\s*\d+', b'"expires_at":%d' % (time.time() + 3600), event)


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def respond(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    all_headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req_fixture"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})
