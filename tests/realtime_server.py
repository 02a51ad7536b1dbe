"""A local Realtime API server for tests: a real WebSocket server (websockets) on 127.0.0.1, the GA event
names and shapes of the official SDK's `openai.types.realtime`.

Each answer replays a Chat Completions capture of tests/fixtures/upstream as the Realtime events the same
answer would be (`realtime_events`): the same transcript pieces, the same audio bytes in the same pieces,
the same tool calls and usage, so a test can assert that both upstreams give the same normalized output.
The `model` query parameter (what `realtime.connect(model=...)` sends) picks the behaviour:
- `fixture/NAME`: capture NAME;
- `slow/NAME`: the same, one event every `SLOW_EVENT_SECONDS` (a test interrupts mid-answer);
- `toolcall/NAME`: the `tool_call` capture, or once a `function_call_output` item arrived, capture NAME;
- `cancelled/NAME`: the first half of the capture, then `response.done` `cancelled` (turn detected);
- `incomplete/REASON/NAME`: the capture, then `response.done` `incomplete` for REASON;
- `failed/NAME`: the first half, then `response.done` `failed` with a server_error;
- `error/TYPE/CODE`: an `error` event instead of the answer (the session refused the request);
- `stall/NAME`: the first half of the capture, `STALL_SECONDS` of silence, then the rest;
- `drop/NAME`: the first half of the capture, then the TCP connection drops without a close frame;
- `status/CODE/ERROR_CODE`: the WebSocket handshake is refused with that HTTP status and an OpenAI error;
- `ratelimits/NAME`: `rate_limits.updated` (requests 99, tokens 9000 remaining) before the capture.
A session whose `session.update` set `audio.input.turn_detection` detects turns itself, as the API does with
`create_response` and `interrupt_response`: appended audio is cut in 20 ms frames, a frame with a sample
louder than VOICED_LEVEL is speech; `input_audio_buffer.speech_started` at the first such frame,
`speech_stopped` after `silence_duration_ms` (default 500) of quiet frames, then `committed` and an answer
as for `response.create`. Speech while an answer runs cancels it (`response.done` `cancelled`,
`turn_detected`).
Every client event is recorded per session, and so are the sessions the client closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from service.realtime_mapping import usage_to_realtime
from tests.upstream_server import FIXTURES

SLOW_EVENT_SECONDS = 0.05
VOICED_LEVEL = 500  # a sample louder than this makes a 20 ms frame speech (the test server's "VAD")
FRAME_BYTES = 24 * 20 * 2  # 20 ms of 24 kHz pcm16
STALL_SECONDS = 5.0
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def capture_chunks(name: str) -> list[dict[str, Any]]:
    """The decoded JSON chunks of a Chat Completions capture, in order ([DONE] left out)."""
    chunks = []
    for event in (FIXTURES / f"{name}.sse").read_text().split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks


def realtime_events(name: str, response_id: str, item_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of capture NAME as the Realtime API would send the same answer, and its `response.done`
    response (status and usage as the capture ends)."""
    events: list[dict[str, Any]] = []
    calls: dict[int, str] = {}
    finish_reason = None
    usage: dict[str, Any] | None = None
    common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    for chunk in capture_chunks(name):
        if "error" in chunk:
            events.append({"type": "error", "event_id": _id("event"), "error": chunk["error"]})
            continue
        if chunk.get("usage"):
            usage = usage_to_realtime(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            audio = delta.get("audio") or {}
            if audio.get("transcript"):
                events.append(
                    {
                        "type": "response.output_audio_transcript.delta",
                        "event_id": _id("event"),
                        **common,
                        "delta": audio["transcript"],
                    }
                )
            if audio.get("data"):
                events.append(
                    {
                        "type": "response.output_audio.delta",
                        "event_id": _id("event"),
                        **common,
                        "delta": audio["data"],
                    }
                )
            if delta.get("content"):
                events.append(
                    {
                        "type": "response.output_text.delta",
                        "event_id": _id("event"),
                        **common,
                        "delta": delta["content"],
                    }
                )
            for piece in delta.get("tool_calls") or []:
                index = piece.get("index", 0)
                function = piece.get("function") or {}
                if index not in calls:
                    calls[index] = piece["id"]
                    item = {
                        "id": _id("item"),
                        "type": "function_call",
                        "status": "in_progress",
                        "call_id": piece["id"],
                        "name": function.get("name"),
                        "arguments": "",
                    }
                    events.append(
                        {
                            "type": "response.output_item.added",
                            "event_id": _id("event"),
                            "response_id": response_id,
                            "output_index": index + 1,
                            "item": item,
                        }
                    )
                if function.get("arguments"):
                    events.append(
                        {
                            "type": "response.function_call_arguments.delta",
                            "event_id": _id("event"),
                            "response_id": response_id,
                            "item_id": item_id,
                            "output_index": index + 1,
                            "call_id": calls[index],
                            "delta": function["arguments"],
                        }
                    )
            finish_reason = choice.get("finish_reason") or finish_reason
    status, details = "completed", None
    if finish_reason == "length":
        status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        status, details = "incomplete", {"type": "incomplete", "reason": "content_filter"}
    response: dict[str, Any] = {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": [],
    }
    if usage is not None:
        response["usage"] = usage
    return events, response


@dataclass
class Session:
    """One client connection: what it sent, and whether it closed."""

    model: str
    events: list[dict[str, Any]] = field(default_factory=list)
    replied: list[dict[str, Any]] = field(default_factory=list)  # the answers' events the server sent
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    answering: asyncio.Task[None] | None = None
    turn_detection: dict[str, Any] | None = None  # the session's, once a session.update set it
    input_bytes: int = 0  # bytes of input audio judged so far (frames), for audio_start_ms / audio_end_ms
    pending: bytearray = field(default_factory=bytearray)  # less than a frame, waiting for the rest
    speech_item: str = ""  # the item of the speech under way ("" when nobody speaks)
    quiet_ms: int = 0  # quiet milliseconds since the last speech frame

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """The client events of one type, in order."""
        return [event for event in self.events if event.get("type") == kind]


class RealtimeServer:
    """Serves Realtime sessions on 127.0.0.1; start with `async with`."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.base_url = ""
        self._server: Server | None = None
        self.handshakes_refused = 0
        self.drop_next = 0  # the next N answers, whatever their model, drop the connection mid-answer
        self.expire_next = 0  # the next N answers end their session: `session_expired`, then a close

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._session, "127.0.0.1", 0, process_request=self._handshake, max_size=2**24
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def last(self) -> Session:
        """The latest session."""
        return self.sessions[-1]

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != "/v1/realtime":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != "Bearer sk-test":
            return _refusal(401, "invalid_api_key", "Incorrect API key provided: sk-te***.")
        model = parse_qs(url.query).get("model", [""])[0]
        parts = model.split("/")
        if parts[0] == "status":
            self.handshakes_refused += 1
            return _refusal(int(parts[1]), parts[2] if len(parts) > 2 else "", f"refused with {parts[1]}")
        return None

    async def _session(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        model = parse_qs(urlsplit(connection.request.path).query).get("model", [""])[0]
        session = Session(model)
        self.sessions.append(session)
        created = {
            "type": "session.created",
            "event_id": _id("event"),
            "session": {"object": "realtime.session", "type": "realtime", "id": _id("sess"), "model": model},
        }
        try:
            await connection.send(json.dumps(created))
            async for message in connection:
                event = json.loads(message)
                session.events.append(event)
                await self._handle(connection, session, event)
        except ConnectionClosed:
            pass
        finally:
            if session.answering is not None:
                session.answering.cancel()
            session.closed.set()

    async def _handle(self, connection: ServerConnection, session: Session, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            audio_input = ((event.get("session") or {}).get("audio") or {}).get("input") or {}
            if "turn_detection" in audio_input:
                session.turn_detection = audio_input["turn_detection"]
            await _send(connection, {"type": "session.updated", "session": event.get("session")})
        elif kind == "input_audio_buffer.append" and session.turn_detection:
            session.pending += base64.b64decode(event["audio"])
            await self._detect(connection, session)
        elif kind == "conversation.item.create":
            await _send(
                connection,
                {
                    "type": "conversation.item.added",
                    "previous_item_id": None,
                    "item": {"id": _id("item"), **event["item"]},
                },
            )
        elif kind == "input_audio_buffer.commit":
            item_id = _id("item")
            await _send(
                connection,
                {"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": item_id},
            )
        elif kind == "response.create":
            session.answering = asyncio.create_task(self._answer(connection, session))
        elif kind == "response.cancel":
            await _cancel(connection, session, "client_cancelled")
        elif kind == "conversation.item.truncate":
            await _send(
                connection,
                {
                    "type": "conversation.item.truncated",
                    "item_id": event["item_id"],
                    "content_index": event["content_index"],
                    "audio_end_ms": event["audio_end_ms"],
                },
            )

    async def _detect(self, connection: ServerConnection, session: Session) -> None:
        """Turn detection on the frames appended so far (the session's turn_detection is set)."""
        assert session.turn_detection is not None
        silence_ms = int(session.turn_detection.get("silence_duration_ms") or 500)
        while len(session.pending) >= FRAME_BYTES:
            frame = bytes(session.pending[:FRAME_BYTES])
            del session.pending[:FRAME_BYTES]
            at_ms = session.input_bytes // 48
            session.input_bytes += FRAME_BYTES
            loud = max(abs(sample) for sample in memoryview(frame).cast("h")) > VOICED_LEVEL
            if loud and not session.speech_item:
                session.speech_item = _id("item")
                await _cancel(connection, session, "turn_detected")  # interrupt_response
                started = {"audio_start_ms": at_ms, "item_id": session.speech_item}
                await _send(connection, {"type": "input_audio_buffer.speech_started", **started})
            if loud:
                session.quiet_ms = 0
            elif session.speech_item:
                session.quiet_ms += 20
                if session.quiet_ms >= silence_ms:
                    item_id, session.speech_item = session.speech_item, ""
                    stopped = {"audio_end_ms": at_ms + 20, "item_id": item_id}
                    await _send(connection, {"type": "input_audio_buffer.speech_stopped", **stopped})
                    committed = {"previous_item_id": None, "item_id": item_id}
                    await _send(connection, {"type": "input_audio_buffer.committed", **committed})
                    if session.turn_detection.get("create_response"):
                        session.answering = asyncio.create_task(self._answer(connection, session))

    async def _answer(self, connection: ServerConnection, session: Session) -> None:
        parts = session.model.split("/")
        mode, name = parts[0], parts[-1]
        if self.drop_next:
            self.drop_next -= 1
            mode = "drop"
        response_id, item_id = _id("resp"), _id("item")
        if mode == "error":
            error = {
                "type": parts[1],
                "code": parts[2] or None,
                "message": f"refused: {parts[2]}",
                "param": None,
                "event_id": None,
            }
            await _send(connection, {"type": "error", "error": error})
            return
        if mode == "toolcall":
            answered = (
                bool(session.sent("conversation.item.create"))
                and session.sent("conversation.item.create")[-1]["item"]["type"] == "function_call_output"
            )
            name = name if answered else "tool_call"
        events, response = realtime_events(name, response_id, item_id)
        pause = SLOW_EVENT_SECONDS if mode == "slow" else 0.0
        created = {"object": "realtime.response", "id": response_id, "status": "in_progress", "output": []}
        await _send(connection, {"type": "response.created", "response": created})
        if mode == "ratelimits":
            limits = [
                {"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 1.0},
                {"name": "tokens", "limit": 10000, "remaining": 9000, "reset_seconds": 2.5},
            ]
            await _send(connection, {"type": "rate_limits.updated", "rate_limits": limits})
        message = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await _send(
            connection,
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": message,
            },
        )
        if mode == "stall":  # half the answer, then silence for STALL_SECONDS, then the rest
            half = len(events) // 2
            for event in events[:half]:
                await connection.send(json.dumps(event))
            await asyncio.sleep(STALL_SECONDS)
            events = events[half:]
        if mode in ("cancelled", "failed", "drop"):
            events = events[: len(events) // 2]
        for event in events:
            if pause:
                await asyncio.sleep(pause)
            session.replied.append(event)
            await connection.send(json.dumps(event))
        if mode == "drop":
            connection.transport.abort()
            return
        if mode == "cancelled":
            response.update(
                status="cancelled", status_details={"type": "cancelled", "reason": "turn_detected"}
            )
        elif mode == "failed":
            error = {
                "type": "server_error",
                "code": "server_error",
                "message": "The server had an error while processing your request.",
            }
            response.update(status="failed", status_details={"type": "failed", "error": error})
        elif mode == "incomplete":
            response.update(status="incomplete", status_details={"type": "incomplete", "reason": parts[1]})
        await _send(connection, {"type": "response.done", "response": response})
        if self.expire_next:
            self.expire_next -= 1
            error = {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.",
                "param": None,
                "event_id": None,
            }
            await _send(connection, {"type": "error", "error": error})
            await connection.close(1000, "session expired")


async def _cancel(connection: ServerConnection, session: Session, reason: str) -> None:
    """Stop the running answer, if any, with `response.done` `cancelled` for `reason`."""
    task = session.answering
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    done = {
        "object": "realtime.response",
        "id": "resp_cancelled",
        "status": "cancelled",
        "status_details": {"type": "cancelled", "reason": reason},
        "output": [],
    }
    await _send(connection, {"type": "response.done", "response": done})


async def _send(connection: ServerConnection, event: dict[str, Any]) -> None:
    await connection.send(json.dumps({"event_id": _id("event"), **event}))


def _refusal(status: int, code: str, message: str) -> Response:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code or None}}
    ).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    if status == 429:
        headers["retry-after-ms"] = "1500"
    return Response(status, HTTPStatus(status).phrase, headers, body)


def b64_bytes(data: str) -> int:
    """Bytes in a base64 string."""
    return len(base64.b64decode(data))
