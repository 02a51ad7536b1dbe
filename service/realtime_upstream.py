"""The Realtime upstream: a turn over the Realtime API's WebSocket, through the official SDK's client.

`RealtimeUpstream.open(params)` takes the same Chat Completions request as `OpenAIUpstream` and yields a
stream of the same chunks (`service.realtime_mapping` translates both ways), so everything above it is
unchanged. A StreamTurn is a short session: connect, `session.update`, the history as items,
`response.create`, the answer's events until `response.done`, close. A conversation keeps one session
open across its turns (`service.realtime_session`).

The SDK keeps auth, the URL (`ws(s)://<base_url>/realtime?model=...`, so `OPENAI_BASE_URL` points both
upstreams at one server) and the socket; its reconnects stay off (a new socket is a new, empty session:
only the gateway knows what to replay). Events are decoded here from bytes, as on the Chat Completions
path, rather than into one pydantic object per 100 ms of audio. Waits are bounded by `Deadlines`: the
WebSocket handshake by `connect_seconds`, `response.created` by `first_byte_seconds`, each gap between
events by `idle_seconds`; one event is at most `MAX_EVENT_BYTES`, the socket's receive queue
`MAX_QUEUED_FRAMES` frames, what waits to be sent the SDK's `SEND_QUEUE_BYTES`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import openai
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import ConversationItemParam, SessionUpdateEventParam
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from audiochat.v1 import audiochat_pb2 as pb
from service import metrics
from service.audio.decode import DecodeLimits, decode_file
from service.audio.wav import AudioFormatError, parse_wav
from service.errors import TurnFailed, UpstreamFailure, turn_error_from_stream_frame, upstream_error
from service.realtime_mapping import (
    SAMPLE_RATE_HZ,
    EventTranslator,
    Unsupported,
    conversation_items,
    session_config,
)
from service.upstream import Deadlines, _failure_for_status, retry_after_ms_from_headers

log = logging.getLogger(__name__)

NAME = "realtime"  # the `upstream` metric label
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one server event; a larger one closes the socket (1009)
MAX_QUEUED_FRAMES = (
    64  # received frames waiting to be read: past it the socket stops reading (TCP back-pressure)
)
SEND_QUEUE_BYTES = 4 * 1024 * 1024  # client events the SDK holds while a send waits
DEFAULT_DEADLINES = Deadlines()
DEFAULT_DECODE_LIMITS = DecodeLimits()
CLOSE_SECONDS = 2.0  # closing handshake and a last response.cancel, at most


def deadline_failure(message: str) -> TurnFailed:
    """A `deadline_exceeded` turn failure, retryable."""
    return TurnFailed(UpstreamFailure(pb.ERROR_CODE_DEADLINE_EXCEEDED, message, True))


def closed_failure(exc: BaseException | None = None) -> TurnFailed:
    """The session's socket closed mid-answer: retryable; the next turn opens a new session."""
    why = ""
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        why = f" (close code {exc.rcvd.code}{': ' + exc.rcvd.reason if exc.rcvd.reason else ''})"
    message = f"the Realtime session closed mid-answer{why}; the answer is incomplete"
    return TurnFailed(UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, message, True))


def failure_from_error_event(error: Mapping[str, Any]) -> UpstreamFailure:
    """A Realtime `error` event's error object as the failure a client sees (the stream frame's map)."""
    turn_error = turn_error_from_stream_frame(error)
    return UpstreamFailure(
        turn_error.code,
        turn_error.message,
        turn_error.retryable,
        0,
        turn_error.upstream_code,
        turn_error.upstream,
    )


def failure_from_handshake(exc: BaseException) -> UpstreamFailure:
    """A refused or failed WebSocket handshake: HTTP statuses as on the Chat Completions path."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        status = response.status_code
        message, upstream = upstream_error(status, error)
        upstream_code = str(error.get("code") or error.get("type") or "")
        failure = _failure_for_status(
            status, message or f"the upstream answered HTTP {status}", upstream_code
        )
        failure.retry_after_ms = retry_after_ms_from_headers(dict(response.headers.raw_items()))
        failure.upstream = upstream
        return failure
    return UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, "the Realtime upstream could not be reached", True)


def rate_limits_updated(event: Mapping[str, Any]) -> None:
    """`rate_limits.updated`: the remaining requests and tokens feed a gauge (other names are ignored)."""
    for limit in event.get("rate_limits") or ():
        if not isinstance(limit, Mapping):
            continue
        name, remaining = limit.get("name"), limit.get("remaining")
        if name in ("requests", "tokens") and isinstance(remaining, int | float):
            metrics.UPSTREAM_RATE_LIMIT_REMAINING.labels(NAME, name).set(remaining)


def audio_to_pcm(limits: DecodeLimits) -> Any:
    """The mapping's AudioToPcm: a recording (base64 wav or mp3) as base64 24 kHz mono pcm16."""

    def convert(data_b64: str, container: str) -> str:
        data = base64.b64decode(data_b64)
        if container == "wav":
            try:
                info = parse_wav(data)
            except AudioFormatError:
                info = None
            if info is not None and (
                info.format_tag,
                info.channels,
                info.bits_per_sample,
                info.sample_rate,
            ) == (
                1,
                1,
                16,
                SAMPLE_RATE_HZ,
            ):
                pcm = data[info.data_offset : info.data_offset + info.data_length]
                return base64.b64encode(pcm).decode("ascii")
        return base64.b64encode(decode_file(data, limits).pcm).decode("ascii")

    return convert


class RealtimeStream:
    """One response on a Realtime session: iterate `chunks()` once (the AnswerStream interface)."""

    def __init__(
        self, connection: AsyncRealtimeConnection, deadlines: Deadlines, request_id: str = ""
    ) -> None:
        self._connection = connection
        self._deadlines = deadlines
        self.request_id = request_id
        self.saw_done = False
        self.translator = EventTranslator()
        self.session_id = ""
        # Client events of earlier turns (a truncate between turns): an error they caused is not this turn's.
        self.earlier_events: frozenset[str] = frozenset()

    async def next_event(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """The next server event (a JSON object) before the loop time `deadline`.

        Raises TurnFailed: `deadline_exceeded` past it, `unavailable` if the socket closes,
        `upstream_malformed` for a frame that is not a JSON object.
        """
        try:
            async with asyncio.timeout_at(deadline):
                raw = await self._connection.recv_bytes()
        except TimeoutError:
            raise deadline_failure(f"the Realtime upstream sent nothing while {waiting_for}") from None
        except ConnectionClosed as exc:
            raise closed_failure(exc) from exc
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            log.warning("malformed Realtime event of %d bytes", len(raw))
            failure = UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_MALFORMED,
                f"the Realtime upstream sent an event that is not a JSON object ({len(raw)} bytes); "
                "the answer is incomplete",
                True,
            )
            raise TurnFailed(failure)
        if event.get("type") == "rate_limits.updated":
            rate_limits_updated(event)
        elif event.get("type") == "session.created":
            session = event.get("session")
            if isinstance(session, Mapping):
                self.session_id = str(session.get("id") or "")
        return event

    async def wait_started(self, opened_at: float) -> None:
        """Read until `response.created`; an `error` event before it is the turn's refusal (TurnFailed)."""
        deadline = opened_at + self._deadlines.first_byte_seconds
        seconds = self._deadlines.first_byte_seconds
        while True:
            try:
                event = await self.next_event(deadline, "the answer was awaited")
            except TurnFailed as exc:
                if exc.failure.code == pb.ERROR_CODE_DEADLINE_EXCEEDED:
                    raise deadline_failure(
                        f"the Realtime upstream started no answer within {seconds:g} s"
                    ) from None
                raise
            kind = event.get("type")
            if kind == "error":
                error = event.get("error")
                error = error if isinstance(error, Mapping) else {}
                if error.get("event_id") in self.earlier_events:
                    log.info("Realtime error for an earlier event: %s", error.get("message"))
                    continue
                raise TurnFailed(failure_from_error_event(error))
            if kind == "response.created":
                self.translator.feed(event)
                self.request_id = self.request_id or self.translator.response_id
                return

    async def chunks(self) -> AsyncIterator[object]:
        """The answer as Chat Completions chunks, until `response.done` or an `error` event."""
        loop = asyncio.get_running_loop()
        idle = self._deadlines.idle_seconds
        translator = self.translator
        while True:
            event = await self.next_event(loop.time() + idle, f"mid-answer for {idle:g} s")
            response_id = event.get("response_id") or _response_id(event)
            if response_id and translator.response_id and response_id != translator.response_id:
                continue  # another response's event (a server-VAD response the gateway did not ask for)
            for chunk in translator.feed(event):
                yield chunk
            if translator.done:
                self.saw_done = True
                return
            if event.get("type") == "error":
                return

    async def cancel(self) -> None:
        """Stop the response if it is still running (`response.cancel`); quietly, bounded."""
        if self.saw_done:
            return
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._connection.send({"type": "response.cancel"})
        except (TimeoutError, WebSocketException, OSError, openai.OpenAIError):
            pass


def _response_id(event: Mapping[str, Any]) -> str:
    response = event.get("response")
    return str(response.get("id") or "") if isinstance(response, Mapping) else ""


class RealtimeUpstream:
    """The Realtime API over the official SDK, against OpenAI or any server speaking it at base_url."""

    name = NAME
    takes_audio_ids = False  # Chat Completions audio ids mean nothing to a Realtime session

    def __init__(
        self,
        api_key: str,
        base_url: str | None,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
    ) -> None:
        self._deadlines = deadlines
        self._decode_limits = decode_limits
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    @property
    def base_url(self) -> str:
        """The HTTP base URL the WebSocket URL is derived from."""
        return str(self._client.base_url)

    @property
    def deadlines(self) -> Deadlines:
        """The waits this upstream allows."""
        return self._deadlines

    async def connect(self, model: str) -> AsyncRealtimeConnection:
        """A new session's socket; TurnFailed if the handshake fails or exceeds `connect_seconds`."""
        manager = self._client.realtime.connect(
            model=model,
            websocket_connection_options={"max_size": MAX_EVENT_BYTES, "max_queue": MAX_QUEUED_FRAMES},
            max_queue_size=SEND_QUEUE_BYTES,
        )
        seconds = self._deadlines.connect_seconds
        try:
            async with asyncio.timeout(seconds):
                return await manager.__aenter__()
        except TimeoutError:
            raise deadline_failure(
                f"the Realtime upstream did not accept a session within {seconds:g} s"
            ) from None
        except (WebSocketException, OSError) as exc:
            raise TurnFailed(failure_from_handshake(exc)) from exc

    async def prepare(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The session and the items for a request; recordings are converted off the event loop.

        Raises TurnFailed (`invalid_argument`) for what the Realtime API cannot carry or decode.
        """
        try:
            session = session_config(params)
        except Unsupported as exc:
            raise TurnFailed(UpstreamFailure(pb.ERROR_CODE_INVALID_ARGUMENT, str(exc), False)) from None
        messages = params.get("messages") or []
        convert = audio_to_pcm(self._decode_limits)
        try:
            if any(isinstance(m.get("content"), list) for m in messages):
                items = await asyncio.to_thread(conversation_items, messages, convert)
            else:
                items = conversation_items(messages, convert)
        except AudioFormatError as exc:
            failure = UpstreamFailure(pb.ERROR_CODE_INVALID_ARGUMENT, f"unreadable recording: {exc}", False)
            raise TurnFailed(failure) from None
        return session, items

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[RealtimeStream]:
        """A short session for one answer; leaving the context cancels a running response and closes."""
        session, items = await self.prepare(params)
        opened_at = asyncio.get_running_loop().time()
        connection = await self.connect(str(params["model"]))
        stream = RealtimeStream(connection, self._deadlines, _request_id(connection))
        try:
            try:
                await send_session(connection, session)
                await send_items(connection, items)
                await connection.send({"type": "response.create"})
            except (WebSocketException, OSError, openai.OpenAIError) as exc:
                raise closed_failure(exc) from exc
            await stream.wait_started(opened_at)
            yield stream
        finally:
            await stream.cancel()
            await close_quietly(connection)

    def conversation(self, model: str) -> Any:
        """A session for one Converse call (service.realtime_session), starting to connect now."""
        from service.realtime_session import RealtimeConversation  # it builds on this module

        session = RealtimeConversation(self, model)
        session.start()
        return session

    async def list_models(self) -> list[pb.Model] | None:
        """The Realtime API has no listing of its own."""
        return None

    async def close(self) -> None:
        """Close the SDK's HTTP pool (sessions close with their turns or conversations)."""
        await self._client.close()


async def send_session(connection: AsyncRealtimeConnection, session: Mapping[str, Any]) -> None:
    """`session.update` with a session built by service.realtime_mapping (its shapes are the SDK's)."""
    event = {"type": "session.update", "session": session}
    await connection.send(cast(SessionUpdateEventParam, event))


async def send_items(connection: AsyncRealtimeConnection, items: list[dict[str, Any]]) -> None:
    """One `conversation.item.create` per item, in order."""
    for item in items:
        await connection.send({"type": "conversation.item.create", "item": cast(ConversationItemParam, item)})


def _request_id(connection: AsyncRealtimeConnection) -> str:
    """The handshake's `x-request-id`, when the server sent one."""
    response = getattr(getattr(connection, "_connection", None), "response", None)
    headers = getattr(response, "headers", None)
    return str(headers.get("x-request-id", "")) if headers is not None else ""


async def close_quietly(connection: AsyncRealtimeConnection) -> None:
    """Close the socket; a peer that never answers the closing handshake costs at most CLOSE_SECONDS."""
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await connection.close()
    except (TimeoutError, WebSocketException, OSError):
        pass
