"""`/v1/converse`: a Converse call over a WebSocket (JSON text frames, binary audio both ways).

See adapters/PROTOCOL.md for the messages and the binary framing. This module only translates: turns,
history, interrupts and every check on the input are the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from adapters.auth import WS_SUBPROTOCOL, subprotocol_token
from adapters.call_reads import read
from adapters.context import EdgeContext, edge_of, transport_metadata
from adapters.event_json import EVENT_NAMES, JSON_OF
from adapters.schemas import WEBSOCKET_MESSAGES, SchemaError, parse_json
from adapters.status import EdgeError, bad_request, edge_error, from_rpc_error, shutting_down, unauthenticated
from adapters.tool_json import ToolJsonError, tool_result
from adapters.turn_detection import turn_detection
from adapters.turn_request import ENCODINGS, RequestError, checked, history, turn_config
from audiochat.v1 import audiochat_pb2 as pb
from service import metrics

# Binary server frames: turn_index (uint32), sequence (uint32), start_sample (uint64), little-endian;
# 16 bytes, so the pcm16 after it stays aligned for an Int16Array view.
AUDIO_HEADER = struct.Struct("<IIQ")
PROTOCOL_VERSION = 1
REQUEST_QUEUE = 64  # client messages waiting for gRPC: past this, reading the socket waits (backpressure)
_MAX_REASON_BYTES = 123  # a close frame's reason must fit in a control frame


class ClientFault(Exception):
    """The client broke the protocol; `error` says how to close."""

    def __init__(self, error: EdgeError) -> None:
        super().__init__(error.message)
        self.error = error


async def converse(websocket: WebSocket) -> None:
    """Check origin and key before the handshake is accepted, then run the conversation."""
    edge = edge_of(websocket)
    if not edge.origins.allows(websocket.headers.get("origin"), websocket.headers.get("host")):
        await websocket.close(1008)  # before accept: the handshake is refused with HTTP 403
        return
    offered: list[str] = websocket.scope.get("subprotocols", [])
    token = subprotocol_token(offered)
    if token is not None and not edge.keys.accepts(token):
        await websocket.close(1008)
        return
    # Never echo the bearer subprotocol back: it would put the key in a response header.
    await websocket.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
    if edge.draining:
        await _close(websocket, shutting_down())
        return
    with edge.stream():
        await Session(websocket, edge).run(token, authenticated=edge.keys.open or token is not None)


async def _close(websocket: WebSocket, error: EdgeError | None) -> None:
    if websocket.client_state is not WebSocketState.CONNECTED:
        return
    # The client may vanish while we say goodbye; that is no error of ours.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        if error is None:
            await websocket.close(1000)
            return
        payload: dict[str, Any] = {"type": "error", **error.fields()}
        if error.retry_after_ms:
            payload["retry_after_ms"] = error.retry_after_ms
        await websocket.send_text(json.dumps(payload))
        reason = error.message.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
        await websocket.close(error.close_code, reason)


class Session:
    """One WebSocket's conversation: a reader (client to core) and a writer (core to client) task."""

    def __init__(self, websocket: WebSocket, edge: EdgeContext) -> None:
        self._ws = websocket
        self._edge = edge
        self._input_format = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000)
        self._turn_index = 0
        self._turn_id = ""
        self._turn_running = False
        self._turn_ended = asyncio.Event()
        self._turn_ended.set()
        self._muted = False  # interrupted: the rest of this turn's audio would never be heard
        self._last_activity = time.monotonic()
        self._started = asyncio.Event()  # the core admitted the conversation

    async def run(self, key: str | None, *, authenticated: bool) -> None:
        """Authenticate if needed, then relay until either side ends; close with the table's code."""
        if not authenticated:
            key = await self._authenticate()
            if key is None:
                await _close(self._ws, unauthenticated('send {"type": "auth", "token": KEY} first'))
                return
        # gRPC's own task writes the requests from this queue: a write cancelled half-way can hang the call.
        requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue(REQUEST_QUEUE)
        closed = asyncio.Event()
        call = self._edge.stub.Converse(
            _drain_queue(requests, self._started, closed), metadata=transport_metadata("websocket", key)
        )
        tasks = {
            asyncio.create_task(self._client_to_core(requests)),
            asyncio.create_task(self._core_to_client(call)),
            asyncio.create_task(self._drained()),
        }
        outcome: EdgeError | bool | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            outcome = _outcome(done.pop())
        finally:
            for task in tasks:
                task.cancel()
            call.cancel()  # ends the turn upstream at once when the client went away or broke the protocol
            _end_requests(requests, closed)
            await asyncio.wait(tasks)
        if outcome is not False:  # False: the client is gone, there is nobody to close for
            await _close(self._ws, None if outcome is True else outcome)

    async def _authenticate(self) -> str | None:
        """The key of a first `auth` message, if it is accepted."""
        try:
            # asyncio.timeout, not wait_for: a wait_for around uvicorn's receive can hang when cancelled.
            async with asyncio.timeout(self._edge.settings.auth_timeout_seconds):
                message = await self._ws.receive()
        except TimeoutError:
            return None
        try:
            body = json.loads(message.get("text") or "")
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("type") != "auth":
            return None
        token = str(body.get("token", ""))
        return token if self._edge.keys.accepts(token) else None

    async def _drained(self) -> EdgeError:
        """Once the edge drains, wait for the running answer to end (or the grace), then ask the client
        to reconnect elsewhere."""
        await self._edge.drain.wait()
        waits = {asyncio.ensure_future(self._turn_ended.wait()), asyncio.ensure_future(self._edge.cut.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return shutting_down()

    async def _client_to_core(self, requests: asyncio.Queue[pb.ConverseRequest | None]) -> EdgeError | bool:
        idle = self._edge.settings.idle_timeout_seconds
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await self._ws.receive()
            except TimeoutError:
                if self._turn_running or time.monotonic() - self._last_activity < idle:
                    continue
                return edge_error("idle", f"no message for {idle:g} s", 408, 1001)
            self._last_activity = time.monotonic()
            if message["type"] == "websocket.disconnect":
                return False
            try:
                request = self._translate(message)
            except ClientFault as fault:
                return fault.error
            if request is not None:
                await requests.put(request)

    def _translate(self, message: Mapping[str, Any]) -> pb.ConverseRequest | None:
        data = message.get("bytes")
        if data is not None:
            return pb.ConverseRequest(audio=pb.AudioChunk(data=data, format=self._input_format))
        try:
            body = parse_json(message.get("text") or "")
        except SchemaError as exc:
            raise ClientFault(exc.error) from None
        if not isinstance(body, dict):
            raise ClientFault(bad_request("text frames must be JSON objects"))
        kind = body.get("type")
        schema = WEBSOCKET_MESSAGES.get(kind) if isinstance(kind, str) else None
        if kind is None:
            raise ClientFault(bad_request("a message needs a 'type'"))
        if schema is None:
            raise ClientFault(bad_request(f"unknown message type {str(kind)[:64]!r}"))
        try:
            checked(schema, body)
            return self._request(str(kind), body)
        except RequestError as exc:
            raise ClientFault(exc.error) from None

    def _request(self, kind: str, body: dict[str, Any]) -> pb.ConverseRequest | None:
        if kind == "config":
            if body.get("input_audio") is not None:
                self._set_input_format(body["input_audio"])
            config = pb.ConverseConfig(
                turn=turn_config(body),
                history=history(body.get("history")),
                turn_detection=turn_detection(body.get("turn_detection")),
            )
            if body.get("resume_grace_ms") is not None:
                config.resume_grace_ms = body["resume_grace_ms"]
            return pb.ConverseRequest(config=config)
        if kind == "resume":
            if body.get("input_audio") is not None:
                self._set_input_format(body["input_audio"])
            resume = pb.ConverseResume(
                conversation_id=body["conversation_id"],
                turn_id=body.get("turn_id") or "",
                sequence=body.get("sequence", 0),
            )
            return pb.ConverseRequest(resume=resume)
        if kind == "text":
            self._turn_ended.clear()  # a drain waits for the answer this asks for
            return pb.ConverseRequest(text=pb.TextInput(text=str(body.get("text", ""))))
        if kind == "audio.start":
            self._set_input_format(body)
            return None
        if kind == "commit":
            self._turn_ended.clear()
            return pb.ConverseRequest(commit=pb.Commit(text=str(body.get("text", ""))))
        if kind == "interrupt":
            played = body.get("played_ms", 0)
            if isinstance(played, bool) or not isinstance(played, int) or not 0 <= played < 2**32:
                raise RequestError("'played_ms' must be a non-negative integer")
            self._muted = self._turn_running
            return pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=played))
        if kind == "clear_audio":
            return pb.ConverseRequest(clear_audio=pb.ClearAudio())
        if kind == "tool_result":
            content = body.get("content", "")
            if not isinstance(content, str):
                raise RequestError("'content' must be a string")
            try:
                result = tool_result(body, "tool_result", content)
            except ToolJsonError as exc:
                raise RequestError(str(exc)) from None
            self._turn_ended.clear()  # the last result starts the continuation; a drain waits for it
            return pb.ConverseRequest(tool_result=result)
        if kind == "auth":
            return None  # a late or repeated auth message changes nothing
        raise RequestError(f"unknown message type {kind!r}")

    def _set_input_format(self, value: Any) -> None:
        if not isinstance(value, dict) or value.get("encoding", "pcm16") not in ENCODINGS:
            names = "|".join(f'"{name}"' for name in ENCODINGS)
            raise RequestError(f'input audio needs {{"encoding": {names}, "sample_rate_hz" (pcm16 only)}}')
        rate = value.get("sample_rate_hz", 24_000 if value.get("encoding", "pcm16") == "pcm16" else 0)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
            raise RequestError("'sample_rate_hz' must be a positive integer")
        self._input_format = pb.AudioFormat(
            encoding=ENCODINGS[value.get("encoding", "pcm16")], sample_rate_hz=rate
        )

    async def _core_to_client(self, call: Any) -> EdgeError | bool | None:
        ws = self._ws
        relay = metrics.edge_relay("websocket")
        try:
            while (response := await read(call)) is not grpc.aio.EOF:
                received_at = time.perf_counter()
                self._last_activity = time.monotonic()
                if response.HasField("started"):
                    self._started.set()
                    started = {
                        "type": "conversation.started",
                        "conversation_id": response.started.conversation_id,
                        "resumed": response.started.resumed,
                        "resumable": response.started.resumable,
                    }
                    await ws.send_text(json.dumps({**started, "protocol": PROTOCOL_VERSION}))
                    continue
                speech = _speech_json(response)
                if speech is not None:
                    await ws.send_text(json.dumps(speech))
                    continue
                event = response.event
                kind = event.WhichOneof("event")
                if event.turn_id != self._turn_id:
                    # A new turn; after a resume, possibly one joined in the middle (no turn.started).
                    self._turn_id = event.turn_id
                    self._turn_index += 1
                    self._turn_running, self._muted = True, False
                    self._turn_ended.clear()
                if kind == "audio":
                    if not self._muted:
                        header = AUDIO_HEADER.pack(self._turn_index, event.sequence, event.audio.start_sample)
                        await ws.send_bytes(header + event.audio.data)
                        relay.observe(time.perf_counter() - received_at)
                    continue
                if kind == "completed":
                    self._turn_running, self._muted = False, False
                    self._turn_ended.set()
                payload = {
                    "type": EVENT_NAMES[str(kind)],
                    "turn_index": self._turn_index,
                    "sequence": event.sequence,
                }
                payload.update(JSON_OF[str(kind)](event))
                payload["turn_id"] = event.turn_id
                await ws.send_text(json.dumps(payload, separators=(",", ":")))
                relay.observe(time.perf_counter() - received_at)
        except grpc.aio.AioRpcError as exc:
            return from_rpc_error(exc)
        except WebSocketDisconnect:
            return False
        return None


def _speech_json(response: pb.ConverseResponse) -> dict[str, Any] | None:
    """Server VAD's events, named as the Realtime API names them; None for other responses."""
    kind = response.WhichOneof("response")
    if kind == "speech_started":
        return {"type": "speech.started", "audio_start_ms": response.speech_started.audio_start_ms}
    if kind == "speech_stopped":
        return {"type": "speech.stopped", "audio_end_ms": response.speech_stopped.audio_end_ms}
    return None


async def _drain_queue(
    requests: asyncio.Queue[pb.ConverseRequest | None], started: asyncio.Event, closed: asyncio.Event
) -> AsyncIterator[pb.ConverseRequest]:
    """The call's requests until None: gRPC's own task iterates this, so it must end, not be abandoned.

    An iterator left waiting when the session ended kept gRPC's task pending forever; the collector then
    logged "Task was destroyed but it is pending!" and "aclose(): asynchronous generator is already running".
    """
    first = await requests.get()
    if first is None:
        return
    yield first
    # Nothing more until the core admits the call: a refusal that arrives while a write is in flight
    # reaches gRPC's client as "Internal error from Core" instead of RESOURCE_EXHAUSTED. Meanwhile
    # the bounded queue holds what the client sends, and then back-pressures its socket.
    waits = [asyncio.ensure_future(started.wait()), asyncio.ensure_future(closed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    while (request := await requests.get()) is not None:
        yield request


def _end_requests(requests: asyncio.Queue[pb.ConverseRequest | None], closed: asyncio.Event) -> None:
    """End the request iterator of a finished session (what it still held is for a call that is over)."""
    closed.set()
    while not requests.empty():
        requests.get_nowait()
    requests.put_nowait(None)


def _outcome(task: asyncio.Task[Any]) -> EdgeError | bool | None:
    """How the first finished task says to close: an error, None (normal) or False (client gone)."""
    exception = task.exception()
    if exception is not None:
        raise exception
    result: EdgeError | bool | None = task.result()
    return result
