"""The Realtime upstream's own turn detection (`server_vad` / `semantic_vad`) in a Converse conversation.

With TURN_DETECTION_TYPE_UPSTREAM_SERVER_VAD or _SEMANTIC_VAD the gateway does not decide when the user's
turn ends: the session is configured with `audio.input.turn_detection` (`create_response` and
`interrupt_response` on), the conversation's audio goes to `input_audio_buffer.append` as it arrives, and
one reader (`SessionListener`) takes every server event of the session: `speech_started`/`speech_stopped`
become our SpeechStarted/SpeechStopped, each `response.created` (the upstream committed the speech and
answers it) becomes a `ResponseFeed`, the AnswerStream of one turn. Speech during an answer: the upstream
cancels it itself; the conversation ends the turn interrupted.

Bounds: a feed holds at most FEED_EVENTS events (past it the reader waits, so the socket stops being read:
TCP back-pressure); a turn waits at most `idle_seconds` between events; a socket that closes ends the call
(`unavailable`, retryable: the session and what it heard are gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import ConnectionClosed

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import InvalidInput, TurnFailed, UpstreamFailure
from service.hands_free import MAX_SETTING_MS, MIN_SILENCE_MS, _ms
from service.realtime_mapping import EventTranslator
from service.realtime_upstream import closed_failure, deadline_failure, rate_limits_updated
from service.upstream import Deadlines

log = logging.getLogger(__name__)

# The Realtime API's names for our upstream types.
UPSTREAM_TYPES = {
    pb.TURN_DETECTION_TYPE_UPSTREAM_SERVER_VAD: "server_vad",
    pb.TURN_DETECTION_TYPE_UPSTREAM_SEMANTIC_VAD: "semantic_vad",
}
FEED_EVENTS = 64  # events of one answer waiting for its turn to take them
DEFAULT_PREFIX_PADDING_MS = 300  # the Realtime API's default, for the gateway's copy of the speech
_Field = Literal[
    "threshold", "prefix_padding_ms", "silence_duration_ms", "min_speech_duration_ms", "echo_guard_ms"
]
_FIELDS: tuple[_Field, ...] = (
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "min_speech_duration_ms",
    "echo_guard_ms",
)
_TUNING = {"server_vad": ("threshold", "prefix_padding_ms", "silence_duration_ms"), "semantic_vad": ()}


def upstream_turn_detection(detection: pb.TurnDetection) -> dict[str, Any] | None:
    """The session's `audio.input.turn_detection` for an upstream type, None for the others.

    Raises InvalidInput naming the field for a setting the type does not take or a value out of range
    (threshold in (0, 1); prefix_padding_ms 0..10000; silence_duration_ms 100..10000).
    """
    kind = UPSTREAM_TYPES.get(detection.type)
    if kind is None:
        return None
    for field in _FIELDS:
        if detection.HasField(field) and field not in _TUNING[kind]:
            raise InvalidInput(
                f"turn_detection.{field} does not apply to upstream_{kind}", f"config.turn_detection.{field}"
            )
    result: dict[str, Any] = {"type": kind, "create_response": True, "interrupt_response": True}
    if detection.HasField("threshold"):
        if not (0.0 < detection.threshold < 1.0 and math.isfinite(detection.threshold)):
            raise InvalidInput(
                "turn_detection.threshold must be between 0 and 1 (exclusive)",
                "config.turn_detection.threshold",
            )
        result["threshold"] = round(detection.threshold, 6)
    if detection.HasField("prefix_padding_ms"):
        result["prefix_padding_ms"] = _ms(detection, "prefix_padding_ms", 0, 0, MAX_SETTING_MS)
    if detection.HasField("silence_duration_ms"):
        result["silence_duration_ms"] = _ms(
            detection, "silence_duration_ms", 0, MIN_SILENCE_MS, MAX_SETTING_MS
        )
    return result


class ResponseFeed:
    """One answer the upstream started by itself, handed from the session's reader to its turn (the
    AnswerStream interface): iterate `chunks()` once."""

    def __init__(self, created: Mapping[str, Any], deadlines: Deadlines) -> None:
        self.translator = EventTranslator()
        self.translator.feed(created)
        self.request_id = self.translator.response_id
        self.saw_done = False
        self.closed = False
        self._deadlines = deadlines
        self._queue: asyncio.Queue[Mapping[str, Any] | TurnFailed] = asyncio.Queue(FEED_EVENTS)

    async def put(self, item: Mapping[str, Any] | TurnFailed) -> None:
        """The next event of the answer (waits for room), or the failure that cut it."""
        if not self.closed:
            await self._queue.put(item)

    def close(self) -> None:
        """The turn is over: what is still queued, and whatever comes later, is dropped."""
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()

    async def chunks(self) -> AsyncIterator[object]:
        """The answer as Chat Completions chunks, until `response.done` or an `error` event."""
        idle = self._deadlines.idle_seconds
        while True:
            try:
                async with asyncio.timeout(idle):
                    item = await self._queue.get()
            except TimeoutError:
                raise deadline_failure(
                    f"the Realtime upstream sent nothing mid-answer for {idle:g} s"
                ) from None
            if isinstance(item, TurnFailed):
                raise item
            for chunk in self.translator.feed(item):
                yield chunk
            if self.translator.done:
                self.saw_done = True
                return
            if item.get("type") == "error":
                return


# What the reader hands the conversation: speech events, a new answer, or the failure that ends the call.
UpstreamEvent = pb.SpeechStarted | pb.SpeechStopped | ResponseFeed | TurnFailed


class FeedUpstream:
    """The Upstream a turn of an upstream-started answer opens: its feed, and `finished` when it ends."""

    name = "realtime"
    takes_audio_ids = False

    def __init__(self, feed: ResponseFeed, finished: Callable[[ResponseFeed], Awaitable[None]]) -> None:
        self._feed = feed
        self._finished = finished

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[ResponseFeed]:
        """The feed (the request is the upstream's own: `params` are not sent)."""
        try:
            yield self._feed
        finally:
            await self._finished(self._feed)

    async def list_models(self) -> list[pb.Model] | None:
        """Not asked of a turn's upstream."""
        return None

    async def close(self) -> None:
        """The session belongs to the conversation: nothing to close here."""


class SessionListener:
    """Reads every event of a session whose turns the upstream detects, and dispatches them."""

    def __init__(
        self,
        connection: AsyncRealtimeConnection,
        deadlines: Deadlines,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> None:
        self._connection = connection
        self._deadlines = deadlines
        self._on_event = on_event
        self._feed: ResponseFeed | None = None
        self._task = asyncio.create_task(self._read(), name="realtime session reader")

    async def _read(self) -> None:
        try:
            while True:
                raw = await self._connection.recv_bytes()
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    log.warning("malformed Realtime event of %d bytes ignored", len(raw))
                    continue
                await self._dispatch(event)
        except ConnectionClosed as exc:
            await self._fail(closed_failure(exc))
        except Exception:  # a bug here must end the call, not leave it waiting for events forever
            log.exception("the Realtime session reader failed")
            message = "the Realtime session's reader failed; the gateway logged the details"
            await self._fail(TurnFailed(UpstreamFailure(pb.ERROR_CODE_INTERNAL, message, True)))

    async def _fail(self, failure: TurnFailed) -> None:
        if self._feed is not None:
            await self._feed.put(failure)
        await self._on_event(failure)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        feed = self._feed
        if kind == "input_audio_buffer.speech_started":
            await self._on_event(pb.SpeechStarted(audio_start_ms=_uint(event.get("audio_start_ms"))))
        elif kind == "input_audio_buffer.speech_stopped":
            await self._on_event(pb.SpeechStopped(audio_end_ms=_uint(event.get("audio_end_ms"))))
        elif kind == "response.created":
            self._feed = ResponseFeed(event, self._deadlines)
            await self._on_event(self._feed)
        elif kind == "rate_limits.updated":
            rate_limits_updated(event)
        elif feed is not None and not feed.closed and _belongs(event, feed.request_id):
            await feed.put(event)
        elif kind == "error":
            error = event.get("error")
            message = error.get("message") if isinstance(error, Mapping) else None
            log.warning("Realtime error outside an answer: %s", message)

    async def close(self) -> None:
        """Stop reading (the session is closing)."""
        self._task.cancel()
        await asyncio.wait([self._task])


def _belongs(event: Mapping[str, Any], response_id: str) -> bool:
    """Whether an event is the answer's: its response id, or an `error` (none) while it runs."""
    response = event.get("response")
    owner = event.get("response_id") or (response.get("id") if isinstance(response, Mapping) else None)
    return owner == response_id if owner else event.get("type") == "error"


def _uint(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**32 else 0
