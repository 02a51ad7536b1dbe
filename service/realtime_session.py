"""A Converse conversation on the Realtime API: one session for the whole call.

The session opens when the conversation is configured and closes with the call. Each turn still arrives
as the whole Chat Completions request (the conversation's history is the gateway's), and the session sends
only what the upstream does not hold yet: it keeps a fingerprint of each message the upstream's own
conversation holds, and when the request's history starts with them, sends the rest as items (a
push-to-talk recording as `input_audio_buffer.append` ... `commit`). When the history no longer matches
(a failed turn the gateway dropped, tool calls cancelled, an answer cut to nothing by an interrupt) or the
socket closed (the upstream's session limit, a dropped connection), the next turn opens a new session with
the history replayed as text: never a turn on a conversation the gateway cannot vouch for.

An interrupt cancels the running response (`response.cancel`) and, once the conversation knows how much
the listener heard, `truncate(played_ms)` cuts the answer's audio item there
(`conversation.item.truncate`, `audio_end_ms`), so the model's memory holds only what was heard.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import openai
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import WebSocketException

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import TurnFailed
from service.realtime_upstream import (
    CLOSE_SECONDS,
    RealtimeStream,
    RealtimeUpstream,
    close_quietly,
    closed_failure,
    send_items,
    send_session,
)
from service.upstream_vad import ResponseFeed, SessionListener, UpstreamEvent

log = logging.getLogger(__name__)

# One input_audio_buffer.append carries at most this much base64 (about 2.7 s of 24 kHz pcm16): well under
# the upstream's 15 MiB event limit, and small enough to keep the socket's send buffer moving.
APPEND_B64_CHARS = 128 * 1024

_ASSISTANT = "assistant"


def _fingerprint(message: Mapping[str, Any]) -> str:
    """What identifies a message in the upstream's conversation. An answer is its calls only: the upstream
    holds its own words (cut by truncate), the gateway's history their transcript or the heard part."""
    if message.get("role") == "assistant":
        calls = [call.get("id") for call in message.get("tool_calls") or ()]
        return f"{_ASSISTANT}:{','.join(str(c) for c in calls)}"
    body = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


def _history(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages without the leading system message (the session's instructions)."""
    if messages and messages[0].get("role") in ("system", "developer"):
        return list(messages[1:])
    return list(messages)


def _only_audio(message: Mapping[str, Any]) -> str | None:
    """The base64 recording of a user message that is a recording alone (push-to-talk), else None."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list) or len(content) != 1:
        return None
    part = content[0]
    return part["input_audio"]["data"] if part.get("type") == "input_audio" else None


class RealtimeConversation:
    """The Upstream of one conversation on the Realtime API: one session across its turns."""

    name = "realtime"
    takes_audio_ids = False

    def __init__(self, upstream: RealtimeUpstream, model: str) -> None:
        self._upstream = upstream
        self._model = model
        self._connection: AsyncRealtimeConnection | None = None
        self._connecting: asyncio.Task[AsyncRealtimeConnection] | None = None
        self._held: list[str] = []  # fingerprints of the messages the upstream's conversation holds
        self._session: dict[str, Any] | None = None  # the last session.update sent
        self._answer_item = ""  # the audio item of the last answer, for truncate
        self._answer_ms = 0  # how much of its audio arrived
        self._lock = asyncio.Lock()
        self._events = itertools.count(1)
        self._truncates: deque[str] = deque(maxlen=16)  # ids of the latest truncate events
        self._listener: SessionListener | None = None  # the upstream detects turns (service.upstream_vad)
        self.sessions_opened = 0

    def start(self) -> None:
        """Open the session now (at the conversation's config), so the first turn does not wait for it."""
        if self._connecting is None and self._connection is None:
            self._connecting = asyncio.create_task(self._upstream.connect(self._model))

    async def _socket(self) -> tuple[AsyncRealtimeConnection, bool]:
        """The open session, or a new one (True when new)."""
        if self._connection is not None:
            return self._connection, False
        task, self._connecting = self._connecting, None
        connection = await task if task is not None else await self._upstream.connect(self._model)
        self._connection = connection
        self.sessions_opened += 1
        return connection, True

    async def _reset(self) -> None:
        """Forget the session: the next turn opens a new one and replays the history."""
        connection, self._connection = self._connection, None
        self._held, self._session, self._answer_item = [], None, ""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        if connection is not None:
            await close_quietly(connection)

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[RealtimeStream]:
        """This turn's response on the conversation's session (the Upstream interface)."""
        async with self._lock:
            every = list(params.get("messages") or [])
            messages = _history(every)
            # The session from the settings and the leading system message (its instructions).
            session, _ = await self._upstream.prepare(
                {**params, "messages": every[: len(every) - len(messages)]}
            )
            wanted = [_fingerprint(message) for message in messages]
            if self._connection is not None and wanted[: len(self._held)] != self._held:
                log.info("the conversation's history no longer matches its Realtime session: replaying it")
                await self._reset()
            opened_at = asyncio.get_running_loop().time()
            try:
                stream = await self._start_response(session, messages, opened_at)
                self._held = wanted
                await stream.wait_started(opened_at)
            except BaseException:
                # Refused, failed or cancelled half-way: what the session holds is unknown now.
                await self._reset()
                raise
            try:
                yield stream
            finally:
                await self._finish(stream)

    async def _start_response(
        self, session: dict[str, Any], messages: Sequence[Mapping[str, Any]], opened_at: float
    ) -> RealtimeStream:
        connection, new = await self._socket()
        try:
            await self._send_turn(connection, session, messages[0 if new else len(self._held) :])
        except TurnFailed:
            if new:
                raise
            # The session closed while idle (its time limit, a dropped connection): once more, anew.
            await self._reset()
            connection, _ = await self._socket()
            await self._send_turn(connection, session, messages)
        stream = RealtimeStream(connection, self._upstream.deadlines)
        stream.earlier_events = frozenset(self._truncates)
        return stream

    async def _send_turn(
        self, connection: AsyncRealtimeConnection, session: dict[str, Any], new: Sequence[Mapping[str, Any]]
    ) -> None:
        try:
            if session != self._session:
                await send_session(connection, session)
                self._session = session
            last_audio = _only_audio(new[-1]) if new else None
            items = new[:-1] if last_audio is not None else new
            if items:
                _, converted = await self._upstream.prepare({"messages": list(items)})
                await send_items(connection, converted)
            if last_audio is not None:
                _, (item,) = await self._upstream.prepare({"messages": [new[-1]]})
                pcm = item["content"][0]["audio"]
                for start in range(0, len(pcm), APPEND_B64_CHARS):
                    chunk = pcm[start : start + APPEND_B64_CHARS]
                    await connection.send({"type": "input_audio_buffer.append", "audio": chunk})
                await connection.send({"type": "input_audio_buffer.commit"})
            await connection.send({"type": "response.create"})
        except (WebSocketException, OSError, openai.OpenAIError) as exc:
            raise closed_failure(exc) from exc

    async def _finish(self, stream: RealtimeStream) -> None:
        translator = stream.translator
        self._answer_item = translator.audio_item_id
        self._answer_ms = translator.audio_bytes * 1000 // (2 * 24_000)
        if not stream.saw_done:
            await stream.cancel()  # interrupted: the answer stops here; truncate() cuts what was not heard
        if stream.saw_done and translator.status not in ("completed", "incomplete", "cancelled"):
            await self._reset()  # a failed response: what the upstream holds is not what the gateway keeps
            return
        calls = ",".join(translator.call_ids())
        self._held.append(f"{_ASSISTANT}:{calls}")

    async def listen(
        self,
        params: Mapping[str, Any],
        turn_detection: Mapping[str, Any],
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> None:
        """Hand turn detection to the upstream (service.upstream_vad): `session.update` with
        `audio.input.turn_detection`, the history as items, then every server event of the session goes
        to `on_event`. `params` is the Chat Completions request of the conversation so far.

        Raises TurnFailed if the session cannot be opened or the socket closes meanwhile.
        """
        async with self._lock:
            every = list(params.get("messages") or [])
            messages = _history(every)
            session, _ = await self._upstream.prepare(
                {**params, "messages": every[: len(every) - len(messages)]}
            )
            session["audio"]["input"]["turn_detection"] = dict(turn_detection)
            connection, _ = await self._socket()
            try:
                await send_session(connection, session)
                if messages:
                    _, items = await self._upstream.prepare({"messages": messages})
                    await send_items(connection, items)
            except (WebSocketException, OSError, openai.OpenAIError) as exc:
                await self._reset()
                raise closed_failure(exc) from exc
            self._session = session
            self._listener = SessionListener(connection, self._upstream.deadlines, on_event)

    async def append(self, pcm16: bytes) -> None:
        """More of the user's 24 kHz pcm16 for the upstream's input buffer (after `listen`); waits while
        the socket's send buffer is full. Raises TurnFailed if the session is gone."""
        connection = self._connection
        if connection is None:
            raise closed_failure()
        step = APPEND_B64_CHARS * 3 // 4
        try:
            for start in range(0, len(pcm16), step):
                audio = base64.b64encode(pcm16[start : start + step]).decode("ascii")
                await connection.send({"type": "input_audio_buffer.append", "audio": audio})
        except (WebSocketException, OSError, openai.OpenAIError) as exc:
            raise closed_failure(exc) from exc

    async def clear_input(self) -> None:
        """Drop what the upstream's input buffer holds (`input_audio_buffer.clear`)."""
        if self._connection is not None:
            with suppress(TimeoutError, WebSocketException, OSError, openai.OpenAIError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._connection.send({"type": "input_audio_buffer.clear"})

    async def response_finished(self, feed: ResponseFeed) -> None:
        """An upstream-started answer's turn ended: stop the answer if it still runs (an Interrupt),
        and remember its audio item for `truncate`."""
        feed.close()
        self._answer_item = feed.translator.audio_item_id
        self._answer_ms = feed.translator.audio_bytes * 1000 // (2 * 24_000)
        if not feed.saw_done and self._connection is not None:
            with suppress(TimeoutError, WebSocketException, OSError, openai.OpenAIError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._connection.send({"type": "response.cancel"})

    async def truncate(self, audio_end_ms: int) -> None:
        """The listener heard `audio_end_ms` of the last answer: cut its audio item there."""
        if not self._answer_item or self._connection is None or audio_end_ms >= self._answer_ms:
            return
        event_id = f"truncate_{next(self._events)}"
        self._truncates.append(event_id)
        event = {
            "event_id": event_id,
            "type": "conversation.item.truncate",
            "item_id": self._answer_item,
            "content_index": 0,
            "audio_end_ms": max(0, audio_end_ms),
        }
        with suppress(TimeoutError, WebSocketException, OSError, openai.OpenAIError):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._connection.send(event)  # type: ignore[arg-type]

    async def list_models(self) -> list[pb.Model] | None:
        """Not asked of a conversation's upstream."""
        return None

    async def close(self) -> None:
        """The call is over: close the session."""
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            try:
                connection: AsyncRealtimeConnection | None = await task
            except BaseException:  # cancelled, or the connect failed: there is nothing to close
                connection = None
            if connection is not None:
                await close_quietly(connection)
        await self._reset()
